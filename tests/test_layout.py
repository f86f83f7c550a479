"""The package's shape: small modules, a readable ppo.py, no import cycles, one entry point."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nlu_helpers"


def _module_imports() -> dict[str, set[str]]:
    """For each module, the package modules it imports when it is imported (not inside functions)."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        name = path.stem
        tree = ast.parse(path.read_text())
        found = set()
        for node in tree.body:  # top level only; TYPE_CHECKING blocks are skipped below
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for sub in ast.walk(node) if isinstance(node, (ast.Import, ast.ImportFrom, ast.If, ast.Try)) else ():
                if isinstance(sub, ast.ImportFrom) and sub.module:
                    if sub.module == "nlu_helpers":
                        found |= {alias.name for alias in sub.names}
                    elif sub.module.startswith("nlu_helpers."):
                        found.add(sub.module.split(".")[1])
                elif isinstance(sub, ast.Import):
                    found |= {a.name.split(".")[1] for a in sub.names if a.name.startswith("nlu_helpers.")}
        graph[name] = found & {p.stem for p in PACKAGE.glob("*.py")}
    return graph


def test_no_import_cycles():
    graph = _module_imports()
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*trail, node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*trail, node])
        state[node] = 2

    for module in sorted(graph):
        visit(module, [])


def test_small_modules_and_a_readable_ppo():
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert sizes["ppo.py"] <= 500, sizes["ppo.py"]
    assert all(n <= 600 for n in sizes.values()), {k: v for k, v in sizes.items() if v > 600}
    source = (PACKAGE / "ppo.py").read_text()
    for name in ("def gae(", "def policy_loss(", "def value_loss(", "def token_rewards(", "def kl_per_token(", "def whiten("):
        assert name in source, name


def test_one_entry_point():
    mains = [p.name for p in PACKAGE.glob("*.py") if 'if __name__ == "__main__"' in p.read_text()]
    assert mains in ([], ["__main__.py"]), mains
