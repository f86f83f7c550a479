"""Every notebook, top to bottom, through the runner and papermill, on the smoke profile."""

import json

import pytest

from nlu_helpers import runner
from nlu_helpers.results import load_results


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    return runner.run("smoke", run_dir=tmp_path_factory.mktemp("run"), progress=False)


def test_every_notebook_runs_on_the_smoke_profile(smoke_run):
    status = json.loads((smoke_run / "run.json").read_text())
    expected = [p.stem for p in runner.notebook_paths()]
    assert list(status["notebooks"]) == expected
    assert all(entry["status"] == "done" for entry in status["notebooks"].values()), status
    assert (smoke_run / "report.md").exists()


def test_notebooks_write_results_files(smoke_run):
    records = load_results(smoke_run)
    stages = {r.get("stage") for r in records}
    assert {"prompt-design", "zero-shot", "few-shot"} <= stages
    evaluations = [r for r in records if r.get("stage") in ("zero-shot", "few-shot")]
    assert {r["mode"] for r in evaluations} == {"generate", "score"}
    assert all(r["profile"] == "smoke" and r["n"] > 0 for r in evaluations)


def test_a_failing_notebook_is_named_and_resume_continues(tmp_path):
    import nbformat

    folder = tmp_path / "notebooks"
    folder.mkdir()
    for number, source in (("01", "x = 1"), ("02", "raise ValueError('broken on purpose')"), ("03", "y = 2")):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        params = nbformat.v4.new_code_cell("output_dir = '.'\nprofile = 'x'")
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params, nbformat.v4.new_code_cell(source)]
        nbformat.write(nb, folder / f"{number}_step.ipynb")
    run_dir = tmp_path / "run"
    with pytest.raises(runner.RunFailed, match=r"02_step.ipynb failed in cell .*ValueError: broken on purpose"):
        runner.run("smoke", run_dir=run_dir, notebooks_folder=folder, progress=False)
    status = json.loads((run_dir / "run.json").read_text())
    assert status["notebooks"]["01_step"]["status"] == "done"
    assert status["notebooks"]["02_step"]["status"] == "failed"
    nb = nbformat.read(folder / "02_step.ipynb", as_version=4)
    nb.cells[1].source = "z = 3"
    nbformat.write(nb, folder / "02_step.ipynb")
    runner.run("smoke", resume=run_dir, notebooks_folder=folder, progress=False)
    status = json.loads((run_dir / "run.json").read_text())
    assert [e["status"] for e in status["notebooks"].values()] == ["done", "done", "done"]


def test_profiles_and_selection_errors_name_the_allowed_values():
    assert {"smoke", "cpu-demo", "colab-t4", "paper"} <= set(runner.profiles())
    with pytest.raises(ValueError, match="unknown profile 'fast'.*cpu-demo"):
        runner.load_profile("fast")
    with pytest.raises(ValueError, match="no notebook '09'"):
        runner.select(runner.notebook_paths(), ["09"], None)
    assert runner.parse_overrides(["eval_limit=20", "tasks=[sst2, rte]", "adapter=null"]) == {
        "eval_limit": 20, "tasks": ["sst2", "rte"], "adapter": None}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        runner.parse_overrides(["eval_limit"])


def test_a_tasks_list_runs_task_notebooks_once_per_task(tmp_path):
    import nbformat

    folder = tmp_path / "notebooks"
    folder.mkdir()
    for number, declares_task in (("01", True), ("02", False)):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        params = nbformat.v4.new_code_cell("output_dir = '.'\nprofile = 'x'" + ("\ntask = 'sst2'" if declares_task else ""))
        params.metadata["tags"] = ["parameters"]
        body = "open(f'ran-{task}.txt', 'w').write(task)" if declares_task else "x = 1"
        nb.cells = [params, nbformat.v4.new_code_cell(body)]
        nbformat.write(nb, folder / f"{number}_step.ipynb")
    run_dir = runner.run("smoke", run_dir=tmp_path / "run", notebooks_folder=folder, progress=False,
                         overrides={"tasks": ["RTE", "sst2"]})
    status = json.loads((run_dir / "run.json").read_text())
    assert list(status["notebooks"]) == ["01_step:rte", "01_step:sst2", "02_step"]
    assert status["notebooks"]["01_step:rte"]["parameters"]["task"] == "rte"
    assert (run_dir / "ran-rte.txt").read_text() == "rte" and (run_dir / "ran-sst2.txt").read_text() == "sst2"
    assert (run_dir / "01_step-rte.ipynb").exists() and (run_dir / "02_step.ipynb").exists()
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        runner.run("smoke", run_dir=tmp_path / "run2", notebooks_folder=folder, progress=False, overrides={"tasks": ["nope"]})


def _declared() -> dict[str, set[str]]:
    import papermill

    return {p.stem: set(papermill.inspect_notebook(str(p))) for p in runner.notebook_paths()}


@pytest.mark.parametrize("name", runner.profiles())
def test_every_profile_key_is_a_parameter_or_a_setting_of_its_notebook(name):
    """A profile key no notebook reads would be ignored without a word."""
    from nlu_helpers.stages import SETTINGS

    profile = runner.load_profile(name)
    declared = _declared()
    for notebook, values in profile["notebooks"].items():
        assert notebook in declared, f"profile {name!r} names notebook {notebook!r}; there are {sorted(declared)}"
        unknown = set(values or {}) - declared[notebook] - set(SETTINGS[notebook]) - {"runs"}  # runs: the runner's own
        assert not unknown, f"profile {name!r} sets {sorted(unknown)} that {notebook} neither declares nor reads as a setting"
    everywhere = set().union(*declared.values(), *map(set, SETTINGS.values())) | {"tasks"}
    assert not set(profile["parameters"]) - everywhere, f"profile {name!r}: {set(profile['parameters']) - everywhere}"


def test_notebooks_have_few_parameters_one_parameters_cell_and_no_outputs():
    """Issue 12: about eight knobs per notebook (profiles set the rest); committed without outputs."""
    import nbformat

    from nlu_helpers.stages import SETTINGS

    for path in runner.notebook_paths():
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
        declared = _declared()[path.stem]
        assert len(declared) <= 9, f"{path.name} declares {len(declared)} parameters: {sorted(declared)}"
        assert not declared & set(SETTINGS[path.stem]), f"{path.name}: {declared & set(SETTINGS[path.stem])} are both"
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} is committed with outputs"


def test_every_code_cell_has_prose_beside_it():
    """Each code cell after the parameters has a markdown cell before it (possibly shared by a short
    run of code cells), and the notebook carries far more words of prose than lines of code."""
    import nbformat

    for path in runner.notebook_paths():
        cells = nbformat.read(path, as_version=4).cells
        start = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])) + 1
        run = 0
        for cell in cells[start:]:
            run = run + 1 if cell.cell_type == "code" and "preflight" not in cell.metadata.get("tags", []) else 0
            assert run <= 1, f"{path.name}: two code cells in a row without prose: {cell.source[:80]!r}"
        words = sum(len(c.source.split()) for c in cells if c.cell_type == "markdown")
        lines = sum(len([line for line in c.source.splitlines() if line.strip() and not line.lstrip().startswith("#")])
                    for c in cells[start:] if c.cell_type == "code")
        assert words >= 6 * lines, f"{path.name}: {words} words of prose for {lines} lines of code"


def test_the_suite_shape_runs_multi_task_sft_and_both_ppo_rows(tmp_path):
    """The smoke-suite profile (tiny model, two suite tasks): notebook 03 trains one adapter on the mix,
    04 runs PPO on each task and once on the mix, and 06 averages over the tasks with paired CIs."""
    run_dir = runner.run("smoke-suite", run_dir=tmp_path / "run", only=["03", "04", "06"], progress=False)
    status = json.loads((run_dir / "run.json").read_text())
    assert list(status["notebooks"]) == ["03_lora_sft:multi-task", "04_ppo:hyperbaton", "04_ppo:sports-understanding",
                                         "04_ppo:multi-task", "06_results"]
    assert all(entry["status"] == "done" for entry in status["notebooks"].values()), status
    assert {p.name for p in (run_dir / "adapters").iterdir()} == {"sft-multi-task", "ppo-hyperbaton", "ppo-sports-understanding",
                                                                  "ppo-multi-task"}
    evaluations = {(r["stage"], r["task"]) for r in load_results(run_dir) if "metrics" in r}
    for task in ("hyperbaton", "sports-understanding"):
        assert {("zero-shot", task), ("sft", task), ("ppo", task), ("ppo-multi-task", task)} <= evaluations
    table = json.loads((run_dir / "results" / "06-results-table.json").read_text())
    assert set(table["table"]["ppo-multi-task"]) == {"hyperbaton", "sports-understanding", "average"}
    by_comparison = {row["comparison"]: row for row in table["average_gains"]}
    assert by_comparison["ppo - sft"]["tasks"] == 2 and by_comparison["ppo - sft"]["rows"] == 16
    assert "| ppo - sft |" in (run_dir / "report.md").read_text()  # the runner's report carries the table and gains
