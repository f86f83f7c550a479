"""Promises about the project itself: one dependency list, two commands, clean notebooks."""

import json
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {r for r in project["dependencies"]} | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {r for r in pip_section if not r.startswith("-e")}
    assert {_name(r): r for r in listed} == {_name(r): r for r in wanted}


# Declared dependencies that are used without being imported under their own name.
NOT_IMPORTED = {
    "jupyterlab": "the notebook app the README opens",
    "ipykernel": "the python3 kernel papermill and JupyterLab run the notebooks in",
    "gguf": "transformers reads the embedded model's GGUF file with it",
    "nbformat": "the notebook file format (papermill; the tests write notebooks with it)",
    "playwright": "the browser tests drive Chromium with it (tests/browser)",
}
IMPORT_NAMES = {"scikit-learn": "sklearn", "pyyaml": "yaml"}


def _python_sources() -> str:
    files = [p for folder in ("nlu_helpers", "benchmarks", "tests") for p in (ROOT / folder).rglob("*.py")]
    cells = ["".join(c["source"]) for nb in sorted((ROOT / "notebooks").glob("*.ipynb"))
             for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
    return "\n".join([p.read_text() for p in files] + cells)


def test_every_declared_dependency_is_used():
    """A dependency nobody imports is weight for every install (``evaluate`` was one, and it needs the hub)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    sources = _python_sources()
    declared = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    unused = []
    for requirement in declared:
        name = _name(requirement)
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        if name not in NOT_IMPORTED and not re.search(rf"^\s*(import|from)\s+{module}\b", sources, re.M):
            unused.append(name)
    assert not unused, f"declared but never imported: {unused}; remove them or say in NOT_IMPORTED why they are needed"


def test_notebooks_are_committed_without_outputs_and_have_one_parameters_cell():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in notebooks:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), path.name
        tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make workbook" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
