"""The interactive path, tested as a person uses it: JupyterLab and the widgets in a real Chromium.

Each notebook is opened in a fresh JupyterLab workspace with the smoke profile's parameters
injected (as the runner does), run with Run > Run All Cells, saved with File > Save, and read
back: any cell error fails the test with its traceback. On top of that:

* ``01_prompt_design``: the playground is driven with the mouse and keyboard (task, example,
  k, the Run button) and what it shows must equal what ``nlu_helpers.playground.run_example``
  computes in this process on the same tiny model, rows and seed;
* notebooks that draw a ``LivePlot``: its image must change at least twice while the cell runs;
* a test of the test: in a kernel whose playground callback is sabotaged (a mutated copy of
  playground.py), that check must fail on the sabotaged field, and pass again once restored.

Screenshots of every stage go to $BROWSER_ARTIFACTS (or a pytest temp folder, printed at the end).
"""

from __future__ import annotations

import difflib
import shutil
import textwrap
from pathlib import Path
from typing import Callable

import pytest

import jlab_driver as driver
from nlu_helpers import runner

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))  # whatever notebooks exist, 04_ppo included once added
PLAYGROUND_NOTEBOOK = "01_prompt_design"
RUN_TIMEOUT = 240  # seconds for Run All Cells on the smoke profile (a few seconds to ~30 s here)

# The playground choices the test makes: another task first, then the first task with another example and k.
OTHER_TASK = "rte"
CHOICES = [(OTHER_TASK, 0, 0), (None, 5, 2)]  # None: the notebook's own task


def _smoke_parameters(source: Path, output_dir: Path) -> dict:
    return runner.parameters_for(source, "smoke", runner.load_profile("smoke"), {}, output_dir)


def _prepare(lab: driver.LabServer, source: Path, folder: str, tmp_path: Path, *, kernel_name: str = driver.KERNEL_NAME) -> tuple[str, dict]:
    """Copy ``source`` under the server root with the smoke parameters; return its server path and parameters."""
    parameters = _smoke_parameters(source, tmp_path / "run")
    driver.prepare_notebook(source, lab.root / folder / source.name, parameters, kernel_name=kernel_name)
    return f"{folder}/{source.name}", parameters


def _live_plot_cells(path: Path) -> list[int]:
    """Indices of the cells that draw a LivePlot (they must update while they run)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and "LivePlot(" in cell.source]


def _run_and_check_cells(notebook: driver.NotebookPage, prepared: Path) -> dict:
    """Run All Cells, save, and fail with every error's traceback; returns the saved notebook."""
    plot_cells = _live_plot_cells(prepared)
    notebook.watch_images(plot_cells)
    shot_live: set[int] = set()

    def during_run() -> None:  # a screenshot of each live plot while its cell is still running
        for index, log in notebook.image_log().items():
            if index not in shot_live and len(log) >= 2 and log[-1]["running"]:
                shot_live.add(index)
                try:
                    notebook.cell(index).scroll_into_view_if_needed(timeout=5_000)
                except Exception:
                    pass
                notebook.screenshot(f"cell{index}-live-plot-while-running")

    seconds = notebook.run_all(timeout=RUN_TIMEOUT, on_tick=during_run)
    print(f"{notebook.path}: Run All Cells took {seconds:.1f} s")
    notebook.screenshot("ran-all-cells")
    saved = notebook.save()
    errors = driver.cell_errors(saved)
    assert not errors, f"{notebook.path}: {len(errors)} cell(s) failed in JupyterLab:\n\n" + "\n\n".join(errors)
    not_run = [i for i, c in enumerate(saved["cells"]) if c["cell_type"] == "code" and c.get("execution_count") is None]
    assert not not_run, f"{notebook.path}: cells {not_run} were never run by Run All Cells"

    for index, log in notebook.image_log().items():
        notebook.cell(index).scroll_into_view_if_needed(timeout=5_000)
        notebook.screenshot(f"cell{index}-live-plot-final")
        while_running = [entry for entry in log if entry["running"]]
        changes = len(while_running) - 1
        print(f"{notebook.path}: the LivePlot in cell {index} changed {changes} time(s) while its cell ran")
        assert changes >= 2, (
            f"{notebook.path}: the LivePlot in cell {index} changed {max(changes, 0)} time(s) while its cell ran "
            f"(wanted at least 2: it should redraw during training, not only at the end); images seen: {log}"
        )
    return saved


# ----------------------------------------------------------------------------- the playground

@pytest.fixture(scope="session")
def playground_reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str | None, int, int], dict]:
    """``expected(task, index, k)``: what the playground must show, computed here by the package itself.

    Mirrors the notebook's playground cell: the same tiny model, the notebook's task with
    ``playground_rows`` validation rows shuffled with ``seed``, one sample row for the other
    tasks, and the first 200 training rows as demonstrations for the notebook's task.
    """
    from nlu_helpers import data, models
    from nlu_helpers.playground import run_example
    from nlu_helpers.samples import SAMPLE_ROWS
    from nlu_helpers.tasks import get_task

    source = ROOT / "notebooks" / f"{PLAYGROUND_NOTEBOOK}.ipynb"
    parameters = _smoke_parameters(source, tmp_path_factory.mktemp("unused"))
    task = get_task(parameters["task"])
    tokenizer = models.load_tokenizer(parameters["model"])
    model = models.load_model(parameters["model"])
    own_rows = list(data.load_split(task, "validation", limit=parameters["playground_rows"], shuffle_seed=parameters["seed"]))
    pool = data.demonstration_pool(task)
    demos = list(pool.select(range(min(200, len(pool)))))

    def expected(task_name: str | None, index: int, k: int) -> dict:
        name = task_name or task.name
        rows = own_rows if name == task.name else [SAMPLE_ROWS[name]]
        return run_example(model, tokenizer, name, rows, index, k=k, demonstrations=demos if name == task.name else ())

    expected.task = task.name  # type: ignore[attr-defined]
    expected.rows = len(own_rows)  # type: ignore[attr-defined]
    return expected


def check_playground(notebook: driver.NotebookPage, expected: Callable[[str | None, int, int], dict], *,
                     label: str = "playground") -> None:
    """Choose task/example/k in the widget, press Run, compare every shown field with ``expected``.

    An ``AssertionError`` lists each field the widget got wrong (or says Run changed nothing).
    """
    playground = driver.Playground(notebook)
    notebook.screenshot(f"{label}-before", element=playground.panel)
    for step, (task_name, index, k) in enumerate(CHOICES, start=1):
        name = task_name or expected.task  # type: ignore[attr-defined]
        playground.choose(name, index, k, examples=expected.rows if task_name is None else 1)  # type: ignore[attr-defined]
        try:
            shown = playground.press_run()
        except TimeoutError as error:
            notebook.screenshot(f"{label}-{step}-no-change", element=playground.panel)
            raise AssertionError(f"pressing Run for task={name} example={index} k={k} did nothing visible: {error} "
                                 "(a callback error shows in JupyterLab's log console, not in the cell)") from None
        notebook.screenshot(f"{label}-{step}-{name}-example{index}-k{k}", element=playground.panel)
        want = expected(task_name, index, k)
        pairs = {
            "prompt": (shown["prompt"], want["prompt"]),
            "model's answer": (shown["answer"], want["answer"]),
            "parsed label": (shown["parsed"], want["parsed_word"]),
            "gold label": (shown["gold"], want["gold_word"]),
            "reward": (shown["reward"], f"{want['reward']:+.2f}"),
            "prompt tokens": (shown["tokens"], str(want["prompt_tokens"])),
        }
        wrong = {field: pair for field, pair in pairs.items() if pair[0] != pair[1]}
        if wrong:
            raise AssertionError(
                f"the playground (task={name}, example={index}, k={k}) shows what the package does not compute:\n"
                + "\n".join(_difference(field, *pair) for field, pair in wrong.items()))


def _difference(field: str, shown: str | None, expected: str) -> str:
    """One wrong field, readable: a line diff for the multi-line prompt, both values otherwise."""
    if shown is not None and "\n" in expected:
        diff = difflib.unified_diff(expected.splitlines(), shown.splitlines(), "expected", "shown", lineterm="", n=1)
        return f"- {field}: differs (line diff)\n" + textwrap.indent("\n".join(diff), "    ")
    return f"- {field}: shown {shown!r}, expected {expected!r}"


# ----------------------------------------------------------------------------- the tests

def test_chromium_and_playwright_are_installed() -> None:
    """A machine without the browser must fail loudly here (never skip): CI installs it with apt-get."""
    assert driver.find_chromium() is not None, driver.INSTALL_HINT
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        pytest.fail(driver.PLAYWRIGHT_HINT, pytrace=False)


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_jupyterlab(source: Path, lab: driver.LabServer, open_notebook: Callable,
                                     request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Every cell runs without error in JupyterLab; live plots redraw while training; the playground is right."""
    path, _ = _prepare(lab, source, f"t-{source.stem}", tmp_path)
    notebook = open_notebook(path)
    _run_and_check_cells(notebook, lab.root / path)
    if source.stem == PLAYGROUND_NOTEBOOK:
        check_playground(notebook, request.getfixturevalue("playground_reference"))
    print(f"screenshots: {notebook.artifacts}")


# Broken versions of the widget callback: (text in playground.py, its replacement, the field the check must name).
# Each replacement is live only while the switch file names it (see ``_SWITCH``).
SABOTAGES = {
    "example-slider-ignored": (
        "rows_by_task[task_name], example_box.value,",
        "rows_by_task[task_name], 0 if _sabotage() == 'example-slider-ignored' else example_box.value,",
        "prompt",
    ),
    # the tiny model answers the same junk to every prompt: this one proves the answer-derived fields are read too
    "reward-sign-flipped": (
        "output.value = render_html(shown)",
        "output.value = render_html({**shown, 'reward': -shown['reward']} if _sabotage() == 'reward-sign-flipped' else shown)",
        "reward",
    ),
}

# Prepended to the sabotaged copy: which sabotage is on is read from a file at each press of Run,
# so one kernel (one notebook run) serves every sabotage and the restored callback.
_SWITCH = """\
import os as _os


def _sabotage() -> str:
    with open(_os.environ["NLU_PLAYGROUND_SABOTAGE"]) as _file:
        return _file.read().strip()
"""

_STARTUP = """\
# Written by tests/browser/test_jupyterlab.py: load a sabotaged nlu_helpers.playground in this kernel only.
import importlib.util, sys
_spec = importlib.util.spec_from_file_location("nlu_helpers.playground", {path!r})
_module = importlib.util.module_from_spec(_spec)
sys.modules["nlu_helpers.playground"] = _module
_spec.loader.exec_module(_module)
"""


def sabotaged_playground() -> str:
    """playground.py with every sabotage spliced in (each off until the switch file names it)."""
    text = (ROOT / "nlu_helpers" / "playground.py").read_text()
    for name, (old, new, _field) in SABOTAGES.items():
        assert text.count(old) == 1, f"the sabotage {name!r} no longer applies to playground.py: update {old!r}"
        text = text.replace(old, new)
    head, sep, rest = text.partition("\nfrom nlu_helpers.evaluation import")
    assert sep, "playground.py no longer imports nlu_helpers.evaluation: update sabotaged_playground()"
    return head + "\n" + _SWITCH + sep + rest


def test_the_playground_check_catches_a_broken_callback(lab: driver.LabServer, open_notebook: Callable,
                                                        playground_reference: Callable, tmp_path: Path) -> None:
    """Test of the test: each broken widget callback makes ``check_playground`` fail on its field; restored, it passes.

    The kernel loads a sabotaged copy of playground.py through a kernelspec of its own (an
    IPython startup file), so nothing shared is changed; the kernelspec is removed afterwards.
    """
    switch = tmp_path / "sabotage.txt"
    switch.write_text("none")
    broken = tmp_path / "sabotaged_playground.py"
    broken.write_text(sabotaged_playground())
    ipython_dir = tmp_path / "ipython"
    (ipython_dir / "profile_default" / "startup").mkdir(parents=True)
    (ipython_dir / "profile_default" / "startup" / "00-sabotage.py").write_text(_STARTUP.format(path=str(broken)))
    kernel_name = "python3-sabotaged-playground"
    spec = driver.install_kernelspec(lab.dirs["data"], kernel_name, display_name="sabotaged playground",
                                     env={"IPYTHONDIR": str(ipython_dir), "NLU_PLAYGROUND_SABOTAGE": str(switch)})
    try:
        source = ROOT / "notebooks" / f"{PLAYGROUND_NOTEBOOK}.ipynb"
        path, _ = _prepare(lab, source, "t-sabotage", tmp_path, kernel_name=kernel_name)
        notebook = open_notebook(path)
        status = notebook.page.evaluate("() => document.querySelector('#jp-main-statusbar').innerText")
        assert "sabotaged playground" in status, f"the sabotaged kernel is not the one running: {status!r}"
        _run_and_check_cells(notebook, lab.root / path)
        for name, (_old, _new, field) in SABOTAGES.items():
            switch.write_text(name)
            with pytest.raises(AssertionError) as caught:
                check_playground(notebook, playground_reference, label=f"sabotage-{name}")
            print(f"sabotage {name}: the check failed as it should:\n{caught.value}")
            assert f"- {field}:" in str(caught.value), f"sabotage {name}: the check failed, but not on the {field}: {caught.value}"
        switch.write_text("none")  # restored: the same kernel, the same check, now it must pass
        check_playground(notebook, playground_reference, label="restored")
    finally:
        shutil.rmtree(spec, ignore_errors=True)
