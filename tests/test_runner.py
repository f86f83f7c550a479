"""The runner keeps a run folder honest: it remembers the settings it was made with, refuses others
(or, with --force, runs the changed notebooks again), and refuses parameter names no notebook declares.

Before: a smoke run's folder, run into again with ``--profile cpu-demo -p model=embedded``, answered
"run: done" at once with nothing run and the smoke results in the report; ``-p evl_limit=3`` was
dropped without a word."""

import argparse
import json
from pathlib import Path

import pytest

from nlu_helpers import runner


def _notebooks(folder: Path, log: Path, declared: dict[str, str]) -> Path:
    """Tiny notebooks ``NN_step``: each declares ``output_dir``, ``profile`` and its own parameters,
    appends its number to ``log`` (outside the run folder) and writes ``NN-<profile>-<model>.txt``
    (``-`` for a notebook that declares no model)."""
    import nbformat

    folder.mkdir()
    for number, extra in declared.items():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        params = nbformat.v4.new_code_cell(f"output_dir = '.'\nprofile = 'x'\n{extra}")
        params.metadata["tags"] = ["parameters"]
        body = (f"open({str(log)!r}, 'a').write('{number}\\n')\n"
                f"open(f'{number}-{{profile}}-{{globals().get(\"model\", \"-\")}}.txt', 'w').write('x')")
        nb.cells = [params, nbformat.v4.new_code_cell(body)]
        nbformat.write(nb, folder / f"{number}_step.ipynb")
    return folder


def _ran(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_a_folder_made_with_other_settings_is_refused_and_force_runs_the_changed_notebooks_again(tmp_path):
    log = tmp_path / "ran.log"
    # 01 does not declare model: a new model leaves it as it was; 02 and 03 run again
    folder = _notebooks(tmp_path / "notebooks", log, {"01": "seed = 1", "02": "model = 'none'\neval_limit = 1",
                                                       "03": "model = 'none'"})
    run_dir = tmp_path / "run"
    runner.run("smoke", run_dir=run_dir, notebooks_folder=folder, progress=False)
    assert _ran(log) == ["01", "02", "03"]
    assert _status(run_dir)["version"] == runner._version()

    with pytest.raises(ValueError) as refused:
        runner.run("cpu-demo", run_dir=run_dir, notebooks_folder=folder, progress=False, overrides={"model": "embedded"})
    message = str(refused.value)
    for words in ("profile 'smoke' -> 'cpu-demo'", "-p model: (not set) -> 'embedded'", "--force to run 01_step"):
        assert words in message, (words, message)
    assert _ran(log) == ["01", "02", "03"] and _status(run_dir)["profile"] == "smoke"  # nothing ran, nothing changed

    # same profile, another model: 01 ran with the same parameters and is kept; 02 and what follows run again
    with pytest.raises(ValueError, match=r"-p model: \(not set\) -> 'embedded'.*--force to run 02_step and every notebook after it"):
        runner.run("smoke", run_dir=run_dir, notebooks_folder=folder, progress=False, overrides={"model": "embedded"})
    runner.run("smoke", run_dir=run_dir, notebooks_folder=folder, progress=False, overrides={"model": "embedded"}, force=True)
    assert _ran(log) == ["01", "02", "03", "02", "03"]
    status = _status(run_dir)
    assert status["overrides"] == {"model": "embedded"} and status["ran"] == ["02_step", "03_step"]
    assert status["changes"][-1]["run_again"] == ["02_step", "03_step"]
    assert all(e["status"] == "done" for e in status["notebooks"].values())
    assert (run_dir / "01-smoke--.txt").exists()
    assert not (run_dir / "02-smoke-tiny-random.txt").exists()  # the stale outputs went with them
    assert (run_dir / "02-smoke-embedded.txt").exists() and (run_dir / "03-smoke-embedded.txt").exists()

    runner.run("smoke", run_dir=run_dir, notebooks_folder=folder, progress=False, overrides={"model": "embedded"})
    assert _ran(log) == ["01", "02", "03", "02", "03"] and _status(run_dir)["ran"] == []  # same settings: nothing to do
    with pytest.raises(ValueError, match=r"-p model: 'embedded' -> 'tiny-random'"):  # --resume keeps the folder's own
        runner.run("smoke", resume=run_dir, notebooks_folder=folder, progress=False, overrides={"model": "tiny-random"})
    runner.run("smoke", resume=run_dir, notebooks_folder=folder, progress=False)


def test_another_package_version_or_an_edited_profile_is_a_difference(tmp_path, monkeypatch):
    log = tmp_path / "ran.log"
    folder = _notebooks(tmp_path / "notebooks", log, {"01": "eval_limit = 1"})
    run_dir = runner.run("smoke", run_dir=tmp_path / "run", notebooks_folder=folder, progress=False)
    monkeypatch.setattr(runner, "_version", lambda: "99.0")
    with pytest.raises(ValueError, match=r"package version '.*' -> '99.0'"):
        runner.run("smoke", run_dir=run_dir, notebooks_folder=folder, progress=False)
    monkeypatch.undo()
    edited = runner.load_profile("smoke")
    edited["parameters"]["eval_limit"] = 3
    monkeypatch.setattr(runner, "load_profile", lambda name: edited)
    with pytest.raises(ValueError, match=r"01_step ran with other parameters than it gets now \(eval_limit: 8 -> 3\)"):
        runner.run("smoke", run_dir=run_dir, notebooks_folder=folder, progress=False)
    status = _status(run_dir)  # a run.json naming a file outside the folder: --force must not delete it
    status["notebooks"]["01_step"]["outputs"].append("../victim.txt")
    (run_dir / "run.json").write_text(json.dumps(status))
    (tmp_path / "victim.txt").write_text("keep me")
    runner.run("smoke", run_dir=run_dir, notebooks_folder=folder, progress=False, force=True)
    assert (tmp_path / "victim.txt").exists()
    assert _ran(log) == ["01", "01"] and _status(run_dir)["notebooks"]["01_step"]["parameters"]["eval_limit"] == 3


def test_unknown_parameters_are_refused_with_the_closest_names_before_anything_runs(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"unknown parameter 'evl_limit'.*did you mean 'eval_limit'"):
        runner.run("smoke", run_dir=run_dir, progress=False, overrides={"evl_limit": 3})
    with pytest.raises(ValueError, match=r"unknown parameter 'zzz'.*known: .*eval_limit"):
        runner.run("smoke", run_dir=run_dir, progress=False, overrides={"zzz": 1})
    with pytest.raises(ValueError, match=r"'output_dir' is set by the runner; use --output"):
        runner.run("smoke", run_dir=run_dir, progress=False, overrides={"output_dir": "elsewhere"})
    assert not run_dir.exists()
    known = runner.known_parameters()
    assert {"eval_limit", "model", "tasks"} <= known and not {"profile", "output_dir"} & known


def test_the_command_answers_in_one_line_with_exit_code_2_and_says_when_nothing_ran(tmp_path, monkeypatch, capsys):
    log = tmp_path / "ran.log"
    folder = _notebooks(tmp_path / "notebooks", log, {"01": "model = 'none'"})
    monkeypatch.setattr(runner, "NOTEBOOKS", folder)

    def command(*extra: str, force: bool = False) -> int:
        args = argparse.Namespace(profile="smoke", output=str(tmp_path / "run"), resume=None, only=None, skip=None,
                                  param=list(extra), force=force)
        return runner.main(args)

    assert command() == 0 and "ran 1 notebook" in capsys.readouterr().out
    assert command() == 0 and "nothing to run" in capsys.readouterr().out
    assert command("model=embedded") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "-p model: (not set) -> 'embedded'" in error and "--force" in error
    assert command("model=embedded", force=True) == 0 and "ran 1 notebook" in capsys.readouterr().out
    assert command("modle=x") == 2 and "did you mean 'model'" in capsys.readouterr().err


def test_readme_gets_the_runs_table_between_its_markers_and_a_readme_without_them_is_left_alone(tmp_path, monkeypatch, capsys):
    """``run --readme`` (what ``make workbook`` passes) rewrites only the block for the run's profile, from
    notebook 06's results file; the text around it stays byte for byte."""
    log = tmp_path / "ran.log"
    folder = _notebooks(tmp_path / "notebooks", log, {"01": "model = 'none'"})
    table = {"stage": "results-table", "table": {"zero-shot": {"a": 50.0, "average": 50.0}, "ppo": {"a": 61.5, "average": 61.5}},
             "average_gains": [{"comparison": "ppo - zero-shot", "gain": 11.5, "low": 2.0, "high": 20.0, "tasks": 1, "rows": 9}]}
    nb = json.loads((folder / "01_step.ipynb").read_text())
    nb["cells"][1]["source"] += ("\nimport json, os\nos.makedirs('results', exist_ok=True)\n"
                                 f"json.dump({table!r}, open('results/06-results-table.json', 'w'))")
    (folder / "01_step.ipynb").write_text(json.dumps(nb))
    monkeypatch.setattr(runner, "NOTEBOOKS", folder)
    around = "# Title\n\nintro\n\n", "\n\nafter the table\n"
    readme = tmp_path / "README.md"
    readme.write_text(around[0] + "<!-- run-table: smoke -->\nold numbers\n<!-- /run-table -->" + around[1])
    other = tmp_path / "OTHER.md"
    other.write_text("<!-- run-table: cpu-suite -->\nkept\n<!-- /run-table -->\n")

    def command(readme_path: Path) -> int:
        args = argparse.Namespace(profile="smoke", output=str(tmp_path / "run"), resume=None, only=None, skip=None,
                                  param=[], force=False, readme=str(readme_path))
        return runner.main(args)

    assert command(readme) == 0 and "table for profile smoke filled" in capsys.readouterr().out
    text = readme.read_text()
    assert text.startswith(around[0] + "<!-- run-table: smoke -->\n| stage | a | average |") and text.endswith("<!-- /run-table -->" + around[1])
    assert "old numbers" not in text and "| ppo | 61.5 | **61.5** |" in text and "| ppo - zero-shot | +11.5 | [+2.0, +20.0] | 1 | 9 |" in text
    assert "Filled by the run `run` (profile smoke" in text and "minutes of notebook time (01 " in text
    assert command(other) == 0 and "has no table for profile smoke" in capsys.readouterr().out
    assert other.read_text() == "<!-- run-table: cpu-suite -->\nkept\n<!-- /run-table -->\n"
