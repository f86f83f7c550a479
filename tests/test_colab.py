"""Colab: every notebook opens from a badge and installs itself there (and only there), both at
one release tag, without touching Colab's torch; runs go to Google Drive when it is mounted; the
script that writes those cells is idempotent and the committed notebooks are in sync with it."""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

import nlu_helpers
from nlu_helpers import colab

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
sys.path.insert(0, str(ROOT / "scripts"))
import sync_colab_cells  # noqa: E402


def _cells(path: Path) -> list:
    return nbformat.read(path, as_version=4).cells


def _install_cell(path: Path) -> str:
    return next(c.source for c in _cells(path) if c.cell_type == "code")


def test_every_notebook_starts_with_its_badge_then_the_install_cell():
    assert len(NOTEBOOKS) >= 5
    for path in NOTEBOOKS:
        cells = _cells(path)
        url = f"https://colab.research.google.com/github/nlu-workbook/nlu-workbook/blob/v{nlu_helpers.__version__}/notebooks/{path.name}"
        assert cells[0].cell_type == "markdown" and cells[0].source == f"[![Open In Colab]({colab.BADGE_IMAGE})]({url})", path.name
        code = [c for c in cells if c.cell_type == "code"]
        assert code[0].source == colab.INSTALL_CELL, f"{path.name}: run scripts/sync_colab_cells.py"
        tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and tagged[0] > 0, path.name  # installed before anything imports nlu_helpers


def test_the_install_cell_is_short_and_installs_the_release_the_badge_opens():
    """Issue 13: no untagged git URL; the tag is the package version, and the badge opens that same tag."""
    code_lines = [line for line in colab.INSTALL_CELL.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(code_lines) <= 4, colab.INSTALL_CELL
    assert colab.RELEASE == f"v{nlu_helpers.__version__}"
    assert f"git+https://github.com/nlu-workbook/nlu-workbook@{colab.RELEASE}" in colab.INSTALL_CELL
    assert colab.RELEASE in colab.INSTALL_CELL.splitlines()[0]  # the comment says which release
    assert f"/blob/{colab.RELEASE}/" in colab.colab_url("01_prompt_design")
    assert "pinned" not in colab.INSTALL_CELL


def test_the_committed_notebooks_are_what_the_sync_script_writes(tmp_path):
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    assert sync_colab_cells.sync_folder(tmp_path / "notebooks") == []  # nothing to change
    for path in NOTEBOOKS:
        assert (tmp_path / "notebooks" / path.name).read_bytes() == path.read_bytes()


def test_the_sync_script_adds_the_cells_once_and_keeps_everything_else(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("model = 'embedded'\nbatch_size = 4")
    params.metadata["tags"] = ["parameters"]
    settings = nbformat.v4.new_code_cell("from nlu_helpers import sft\nsettings = sft.CPU_DEMO.replace(batch_size=batch_size, max_length=64)")
    settings.outputs = [nbformat.v4.new_output("stream", text="old output")]
    settings.execution_count = 7
    nb.cells = [nbformat.v4.new_markdown_cell("# 03 · title"), params, settings, nbformat.v4.new_code_cell("train()")]
    nbformat.write(nb, folder / "03_lora_sft.ipynb")
    plain = nbformat.v4.new_notebook()
    plain.cells = [nbformat.v4.new_markdown_cell("# 07 · another"), nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(plain, folder / "07_new.ipynb")

    assert sync_colab_cells.sync_folder(folder) == [folder / "03_lora_sft.ipynb", folder / "07_new.ipynb"]
    first = {p.name: p.read_text() for p in folder.iterdir()}
    assert sync_colab_cells.sync_folder(folder) == []  # idempotent
    assert {p.name: p.read_text() for p in folder.iterdir()} == first

    cells = _cells(folder / "03_lora_sft.ipynb")
    assert [c.metadata.get("tags", []) for c in cells] == [["colab-badge"], [], ["colab-install"], ["parameters"], [], ["preflight"], []]
    assert "07_new.ipynb" not in cells[0].source and "03_lora_sft.ipynb" in cells[0].source
    assert [c.source for c in cells[3:5]] == [params.source, settings.source] and cells[6].source == "train()"
    assert cells[4].outputs == [] and cells[4].execution_count is None  # outputs cleared
    assert "architectures.preflight(model" in cells[5].source
    cells = _cells(folder / "07_new.ipynb")
    assert [c.source for c in cells[1:]] == ["# 07 · another", colab.INSTALL_CELL, "x = 1"]  # no preflight here

    # the preflight cell runs in that notebook's context (on the CPU it reports and returns)
    namespace: dict = {}
    for cell in _cells(folder / "03_lora_sft.ipynb"):
        if cell.cell_type == "code" and cell.source != "train()":
            exec(cell.source, namespace)
    assert namespace["fit"]["estimate"] is not None and namespace["fit"]["suggested_profile"] in ("cpu-demo", "colab-t4", "paper")


class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, command, **kwargs):
        self.calls.append((list(command), kwargs))
        return subprocess.CompletedProcess(command, 0)


def test_install_cell_does_nothing_off_colab(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    recorder = _Recorder()
    monkeypatch.setattr(subprocess, "run", recorder)
    monkeypatch.chdir(tmp_path)
    for path in NOTEBOOKS:
        namespace: dict = {}
        exec(_install_cell(path), namespace)
        assert recorder.calls == [], path.name
        assert Path.cwd() == tmp_path
        assert set(namespace) - {"__builtins__"} == {"importlib", "os", "subprocess", "sys"}  # nothing from the workbook


def test_install_cell_on_colab_installs_the_release_then_its_dependencies_keeps_torch_and_moves_to_drive(monkeypatch, tmp_path):
    drive = tmp_path / "drive"
    mounted = []

    def mount(where):  # Colab's drive.mount: after the sign-in, MyDrive appears under the mount point
        mounted.append(where)
        (Path(where) / "MyDrive").mkdir(parents=True)

    google = types.ModuleType("google")
    fake_colab = types.ModuleType("google.colab")
    fake_colab.drive = types.SimpleNamespace(mount=mount)
    google.colab = fake_colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", fake_colab)
    monkeypatch.setattr(colab, "DRIVE", drive)
    monkeypatch.delenv("NLU_WORKBOOK_SOURCE", raising=False)
    recorder = _Recorder()
    monkeypatch.setattr(subprocess, "run", recorder)
    monkeypatch.chdir(tmp_path)

    exec(_install_cell(NOTEBOOKS[0]), {})
    [(package, kwargs), (dependencies, _)] = recorder.calls
    # 1. the package alone, from the release tag
    assert package == [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                       f"git+https://github.com/nlu-workbook/nlu-workbook@v{nlu_helpers.__version__}"]
    assert kwargs == {"check": True}
    # 2. its declared dependencies with the gpu extra, torch held by a constraints file and never named
    constraints = dependencies[dependencies.index("-c") + 1]
    assert dependencies[:7] == [sys.executable, "-m", "pip", "install", "-q", "-c", constraints]
    wanted = dependencies[7:]
    assert any(r.startswith("transformers") for r in wanted) and any(r.startswith("bitsandbytes") for r in wanted)
    assert not any(r.startswith(("pytest", "hypothesis", "playwright", "deepspeed")) for r in wanted)  # other extras stay out
    assert not any(part.startswith("torch") for part in wanted)  # torch is never named, so never (re)installed
    pinned = Path(constraints).read_text().split()
    assert f"torch=={importlib.metadata.version('torch')}" in pinned  # and pip may not move it either
    assert all(line.split("==")[0] in ("torch", "torchvision", "torchaudio") for line in pinned)
    assert mounted == [str(drive)]
    assert Path.cwd() == drive / "MyDrive" / "nlu-workbook"  # relative output_dir values land on Drive

    monkeypatch.setenv("NLU_WORKBOOK_SOURCE", "/content/nlu-workbook[gpu]")  # a clone, for hacking on it
    monkeypatch.chdir(tmp_path)
    exec(_install_cell(NOTEBOOKS[-1]), {})
    assert recorder.calls[-2][0][-1] == "/content/nlu-workbook[gpu]"
    assert mounted == [str(drive)]  # already mounted: not asked again


def test_setup_does_nothing_off_colab(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    recorder = _Recorder()
    monkeypatch.setattr(subprocess, "run", recorder)
    monkeypatch.chdir(tmp_path)
    assert colab.setup() == tmp_path and recorder.calls == []


def test_checkpoint_root_prefers_a_mounted_drive(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(tmp_path)
    drive = tmp_path / "drive"
    assert colab.checkpoint_root(drive=drive) == tmp_path  # off Colab, no Drive: the current folder
    (drive / "MyDrive").mkdir(parents=True)
    root = colab.checkpoint_root(drive=drive)
    assert root == drive / "MyDrive" / "nlu-workbook" and root.is_dir()
    assert colab.checkpoint_root(drive=drive, folder="my-runs") == drive / "MyDrive" / "my-runs"
    # on Colab without Drive (mount declined): the runtime's disk, with a warning that it does not last
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    with pytest.warns(UserWarning, match="lost when the runtime disconnects"):
        root = colab.checkpoint_root(drive=tmp_path / "no-drive", local=tmp_path / "content")
    assert root == tmp_path / "content" / "nlu-workbook" and root.is_dir()


def test_checkpoints_in_the_drive_folder_resume_after_a_disconnect(monkeypatch, tmp_path):
    """A PPO run checkpointed under checkpoint_root() continues there from a fresh kernel."""
    from nlu_helpers import data, ppo

    drive = tmp_path / "drive"
    (drive / "MyDrive").mkdir(parents=True)
    monkeypatch.chdir(colab.checkpoint_root(drive=drive))
    rows = list(data.load_split("movie-snippets", "train", limit=8))
    config = ppo.preset("smoke", prompts_per_step=2, batch_size=1, gradient_accumulation_steps=2, ppo_epochs=1, max_new_tokens=(2, 3))
    ppo.train_ppo("tiny-random", "movie-snippets", rows, config, steps=1, output_dir="runs/manual", progress=False, device="cpu")
    checkpoint = drive / "MyDrive" / "nlu-workbook" / "runs" / "manual" / "checkpoints" / "ppo-movie-snippets"
    assert json.loads((checkpoint / "state.json").read_text())["step_count"] == 1
    # "disconnect": a new trainer (new kernel), same relative output_dir
    resumed = ppo.train_ppo("tiny-random", "movie-snippets", rows, config, steps=2, output_dir="runs/manual", progress=False, device="cpu")
    assert [r["step"] for r in resumed.history] == [1, 2]
    assert json.loads((checkpoint / "state.json").read_text())["step_count"] == 2


def test_the_readme_badges_open_the_same_release():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert colab.badge_markdown(path.stem) in readme, f"README: the badge of {path.name} is not {colab.colab_url(path.stem)}"


def test_badge_urls():
    assert colab.colab_url("04_ppo") == colab.colab_url("notebooks/04_ppo.ipynb") == (
        f"https://colab.research.google.com/github/nlu-workbook/nlu-workbook/blob/v{nlu_helpers.__version__}/notebooks/04_ppo.ipynb")
    assert colab.badge_markdown("01_prompt_design").startswith("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](")
    assert os.path.basename(colab.colab_url("06_results")) == "06_results.ipynb"
