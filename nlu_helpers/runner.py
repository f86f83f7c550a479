"""The workbook's main job: execute the notebooks in order with papermill, under a profile.

``python -m nlu_helpers run --profile cpu-demo`` writes ``runs/<timestamp>-<profile>/``:
the executed notebooks, ``results/`` (every notebook's results files), ``figures/``,
``run.json`` (status and seconds per notebook) and ``report.md``.

A profile is a YAML parameter set shipped in ``nlu_helpers/profiles/``: ``parameters``
go to every notebook that declares them, ``notebooks.<name>`` to one notebook. A failed
notebook stops the run with the notebook, cell and error named; what finished is kept
and ``--resume RUN_DIR`` continues from the first unfinished notebook.

A run folder remembers the profile, the ``-p`` parameters and the package version it was
made with (``run.json``). Running into it with other ones is refused, naming the
differences: its finished notebooks would otherwise be reported as results of settings
they never ran with. ``--force`` runs the first notebook whose parameters changed, and
every notebook after it, again (their earlier outputs are deleted first). Parameter names
are checked against the notebooks' ``parameters`` cells before anything runs.
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"
RUNNER_PARAMETERS = {"tasks": "the runner runs task notebooks once per task"}  # read by the runner, not a notebook
SET_BY_RUNNER = {"profile": "--profile", "output_dir": "--output"}
BOOKKEEPING = ("run.json", "report.md")  # the runner's own files in a run folder, never a notebook's output


class RunFailed(RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the error."""


def profiles() -> list[str]:
    folder = resources.files("nlu_helpers") / "profiles"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_profile(name: str) -> dict:
    """A profile's content: ``{"description", "parameters", "notebooks"}``."""
    known = profiles()
    if name not in known:
        raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(known)}")
    text = (resources.files("nlu_helpers") / "profiles" / f"{name}.yaml").read_text()
    profile = yaml.safe_load(text) or {}
    profile.setdefault("parameters", {})
    profile.setdefault("notebooks", {})
    return profile


def notebook_paths(folder: Path = NOTEBOOKS) -> list[Path]:
    """The workbook's notebooks in order (their names start with a number)."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def select(paths: Sequence[Path], only: Sequence[str] | None, skip: Sequence[str] | None) -> list[Path]:
    """Filter notebooks by number ("02") or name ("02_zero_few_shot"); unknown names are an error."""
    def matches(path: Path, key: str) -> bool:
        return path.stem == key or path.stem.split("_", 1)[0] == key.zfill(2)

    for key in [*(only or []), *(skip or [])]:
        if not any(matches(p, key) for p in paths):
            raise ValueError(f"no notebook {key!r}; allowed: {', '.join(p.stem for p in paths)}")
    chosen = [p for p in paths if not only or any(matches(p, k) for k in only)]
    return [p for p in chosen if not skip or not any(matches(p, k) for k in skip)]


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["k=v", ...]`` with YAML-typed values (``limit=20`` is an int, ``tasks=[sst2, rte]`` a list)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {pair!r} is not KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def parameters_for(path: Path, profile_name: str, profile: Mapping, overrides: Mapping, run_dir: Path) -> dict:
    """The parameters one notebook receives: only those its ``parameters`` cell declares."""
    import papermill

    declared = set(papermill.inspect_notebook(str(path)))
    wanted = {
        **profile["parameters"],
        **(profile["notebooks"].get(path.stem) or {}),
        **overrides,
        "profile": profile_name,
        "output_dir": str(run_dir),
    }
    return {key: value for key, value in wanted.items() if key in declared}


RUNS = ("each", "first", "multi-task")  # a profile's ``runs`` for a task notebook: one run per task, one on the first
# task only (an illustration that needs no repeat), one on all tasks at once
MULTI_TASK = "multi-task"


def notebook_runs(profile: Mapping, stem: str) -> tuple[str, ...]:
    """How a task notebook runs over a ``tasks`` list: the profile's ``notebooks.<name>.runs`` (default ``[each]``)."""
    runs = (profile["notebooks"].get(stem) or {}).get("runs", ["each"])
    runs = [runs] if isinstance(runs, str) else list(runs)
    bad = [r for r in runs if r not in RUNS]
    if bad or not runs:
        raise ValueError(f"notebooks.{stem}.runs {runs!r}: allowed values are {', '.join(RUNS)} (a list of them)")
    return tuple(runs)


def work_items(paths: Sequence[Path], profile: Mapping, overrides: Mapping) -> list[tuple[Path, str | list[str] | None, str]]:
    """``(notebook, task, key)`` in run order. With a ``tasks`` list in the profile (or
    ``-p tasks=[...]``), every notebook that declares a ``task`` parameter runs once per
    task (key ``02_zero_few_shot:rte``), and, where the profile says ``runs: [multi-task]``,
    once with the whole list as its ``task`` (key ``03_lora_sft:multi-task``: the paper's
    multi-task SFT and PPO); without a list each notebook runs once (key = its name)."""
    import papermill

    tasks = overrides.get("tasks", profile["parameters"].get("tasks"))
    if tasks is None:
        return [(path, None, path.stem) for path in paths]
    if isinstance(tasks, str) or not tasks:
        raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    from nlu_helpers.tasks import get_task

    try:
        names = [get_task(t).name for t in tasks]  # unknown names fail here, before anything runs
    except KeyError as error:
        raise ValueError(error.args[0]) from None
    items = []
    for path in paths:
        if "task" in papermill.inspect_notebook(str(path)):
            runs = notebook_runs(profile, path.stem)
            if "each" in runs:
                items += [(path, name, f"{path.stem}:{name}") for name in names]
            elif "first" in runs:
                items.append((path, names[0], f"{path.stem}:{names[0]}"))
            if MULTI_TASK in runs:
                items.append((path, names, f"{path.stem}:{MULTI_TASK}"))
        else:
            items.append((path, None, path.stem))
    return items


def known_parameters(folder: Path | None = None) -> set[str]:
    """Every name a ``-p`` may set: the parameters the notebooks declare, plus the runner's own."""
    import papermill

    declared = set().union(*(papermill.inspect_notebook(str(p)) for p in notebook_paths(folder or NOTEBOOKS)))
    return (declared | set(RUNNER_PARAMETERS)) - set(SET_BY_RUNNER)


def check_overrides(overrides: Mapping[str, Any], known: set[str]) -> None:
    """Refuse a parameter no notebook declares (papermill would drop it without a word), naming the closest."""
    for name in overrides:
        if name in SET_BY_RUNNER:
            raise ValueError(f"parameter {name!r} is set by the runner; use {SET_BY_RUNNER[name]}")
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"known: {', '.join(sorted(known))}"
            raise ValueError(f"unknown parameter {name!r}: no notebook declares it; {hint}")


def _version() -> str:
    from nlu_helpers import __version__

    return __version__


def _json(value: Any) -> Any:
    """``value`` as it reads back from run.json (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value))


_UNSET = object()  # a parameter one side does not set


def _show(value: Any) -> str:
    return "(not set)" if value is _UNSET else repr(value)


def _changed_values(before: Mapping, now: Mapping, prefix: str = "") -> list[str]:
    """``"<prefix>key: old -> new"`` for every key whose value differs (as run.json holds them)."""
    before, now = _json(dict(before)), _json(dict(now))
    return [f"{prefix}{key}: {_show(before.get(key, _UNSET))} -> {_show(now.get(key, _UNSET))}"
            for key in sorted(set(before) | set(now)) if before.get(key, _UNSET) != now.get(key, _UNSET)]


def _differences(status: Mapping, profile_name: str, overrides: Mapping, version: str) -> list[str]:
    """What differs between the run folder's settings and the ones asked for, one phrase each."""
    found = []
    if status.get("profile") != profile_name:
        found.append(f"profile {status.get('profile')!r} -> {profile_name!r}")
    found += _changed_values(status.get("overrides", {}), overrides, "-p ")
    if status.get("version") not in (None, version):  # None: a folder made before versions were recorded
        found.append(f"package version {status['version']!r} -> {version!r}")
    return found


def _changed_from(status: Mapping, wanted: Mapping[str, dict], selected: set[str], version: str) -> tuple[str | None, list[str]]:
    """The first notebook entry (in run order) that ran with other parameters than ``wanted`` gives
    now, or whose task left the list, with its parameters' differences; ``(None, [])`` when every
    recorded entry still holds."""
    for key, entry in status.get("notebooks", {}).items():
        if key.split(":", 1)[0] not in selected:
            continue  # not selected this time (--only/--skip): nothing to compare with
        ran_with = {k: v for k, v in entry.get("parameters", {}).items() if k != "output_dir"}
        if status.get("version") not in (None, version) or key not in wanted or _json(wanted[key]) != ran_with:
            return key, _changed_values(ran_with, wanted.get(key, {}))
    return None, []


def _files(run_dir: Path) -> dict[str, int]:
    """Every file under the run folder (relative path -> mtime in ns), to see what a notebook wrote."""
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*")
            if p.is_file() and p.name not in BOOKKEEPING}


def _written(run_dir: Path, before: Mapping[str, int]) -> list[str]:
    """The files that are new or changed since ``before`` (what one notebook wrote)."""
    return sorted(name for name, mtime in _files(run_dir).items() if before.get(name) != mtime)


def _forget(run_dir: Path, status: dict, first: str) -> list[str]:
    """Drop ``first`` and every entry after it from the status and delete the files they wrote."""
    keys = list(status["notebooks"])
    dropped = keys[keys.index(first):]
    kept = {name for key in keys[:keys.index(first)] for name in status["notebooks"][key].get("outputs", [])}
    for key in dropped:
        for name in set(status["notebooks"].pop(key).get("outputs", [])) - kept:
            path = (run_dir / name).resolve()
            if run_dir.resolve() not in path.parents:
                continue  # run.json names only files inside the folder; never delete anything else
            path.unlink(missing_ok=True)
            for folder in path.parents:  # folders the notebook's files leave empty
                if folder == run_dir.resolve() or not folder.is_dir() or any(folder.iterdir()):
                    break
                folder.rmdir()
    return dropped


def _status(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_status(run_dir: Path, status: dict) -> None:
    from nlu_helpers.results import write_atomic

    write_atomic(run_dir / "run.json", json.dumps(status, indent=2) + "\n")


def check_memory(profile_name: str, overrides: Mapping[str, Any], hardware: Mapping | None = None) -> None:
    """On a CUDA GPU, before any notebook runs: does the profile's training fit it? (``architectures.preflight_profile``;
    a ``MemoryError`` names the notebook and its settings.) Not on the CPU, nor for another model than the profile's."""
    from nlu_helpers import architectures, models

    hardware = hardware if hardware is not None else models.describe_hardware()
    if not hardware.get("cuda") or "model" in overrides:
        return
    try:
        architectures.preflight_profile(profile_name, hardware)
    except KeyError:  # an architecture the estimate does not know: notebook 03's own preflight reports that
        return


def run(
    profile_name: str,
    *,
    run_dir: Path | None = None,
    resume: Path | None = None,
    only: Sequence[str] | None = None,
    skip: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    notebooks_folder: Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Execute the notebooks; returns the run folder. Raises ``RunFailed`` on the first failure and
    ``ValueError`` on bad settings, or on a folder made with other ones unless ``force``."""
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from tqdm.auto import tqdm

    notebooks_folder = notebooks_folder or NOTEBOOKS  # read at call time: tests point it elsewhere
    if resume is not None:
        run_dir = Path(resume)
        status = _status(run_dir)
        if not status:
            raise ValueError(f"{run_dir} has no run.json: nothing to resume")
        profile_name = status["profile"]
        overrides = {**status.get("overrides", {}), **(overrides or {})}
        only = only or status.get("only")
        skip = skip or status.get("skip")
    profile = load_profile(profile_name)
    overrides = dict(overrides or {})
    from nlu_helpers.tasks import get_task, is_task_file

    if is_task_file(overrides.get("task")):  # kernels run in the run folder: give them the file's absolute path
        overrides["task"] = get_task(overrides["task"]).source
    check_overrides(overrides, known_parameters(notebooks_folder))
    check_memory(profile_name, overrides)
    paths = select(notebook_paths(notebooks_folder), only, skip)
    if not paths:
        raise ValueError("no notebook left to run after --only/--skip")
    if run_dir is None:
        run_dir = REPO_ROOT / "runs" / f"{datetime.now():%Y%m%d-%H%M%S}-{profile_name}"
    run_dir = Path(run_dir).resolve()
    items = work_items(paths, profile, overrides)
    version = _version()
    status = _status(run_dir)
    if status:  # a folder made before: the same settings, or --force
        differences = _differences(status, profile_name, overrides, version)
        wanted = {}  # what each notebook would receive now (output_dir aside: a moved folder is the same run)
        for path, task, key in items:
            params = parameters_for(path, profile_name, profile, {**overrides, **({"task": task} if task else {})}, run_dir)
            wanted[key] = {k: v for k, v in params.items() if k != "output_dir"}
        first, changed = _changed_from(status, wanted, {p.stem for p in paths}, version)
        if first and not differences:  # same settings, other parameters: the profile or the notebook was edited
            differences = [f"{first} ran with other parameters than it gets now ({', '.join(changed) or 'not in the task list'})"]
        if differences and not force:
            again = (f"--force to run {first} and every notebook after it again" if first
                     else "--force to go on with the new settings (no finished notebook ran with other parameters)")
            raise ValueError(f"{run_dir} was made with other settings ({'; '.join(differences)}); use another --output "
                             f"folder, --resume {run_dir} to go on with its own settings, or {again}")
        if first:
            dropped = _forget(run_dir, status, first)
            status.setdefault("changes", []).append({
                "at": datetime.now().isoformat(timespec="seconds"), "differences": differences, "run_again": dropped})
        status.update(profile=profile_name, overrides=overrides, version=version)
        status.pop("finished", None)
    else:
        status = {
            "profile": profile_name, "started": datetime.now().isoformat(timespec="seconds"), "version": version,
            "overrides": overrides, "only": list(only or []), "skip": list(skip or []), "notebooks": {},
        }
    run_dir.mkdir(parents=True, exist_ok=True)
    status["ran"] = []  # what this invocation ran (the command line reports it)
    _write_status(run_dir, status)

    bar = tqdm(items, desc=f"workbook ({profile_name})", unit="notebook", disable=not progress)
    for path, task, key in bar:
        entry = status["notebooks"].get(key, {})
        if entry.get("status") == "done":
            continue
        bar.set_postfix_str(key)
        params = parameters_for(path, profile_name, profile, {**overrides, **({"task": task} if task else {})}, run_dir)
        executed = run_dir / (path.name if task is None else key.replace(':', '-') + '.ipynb')
        start = time.perf_counter()
        before = _files(run_dir)
        status["notebooks"][key] = {"status": "running", "parameters": params}
        status["ran"].append(key)
        _write_status(run_dir, status)
        try:
            papermill.execute_notebook(
                str(path), str(executed), parameters=params, kernel_name="python3",
                progress_bar=progress, cwd=str(run_dir),
            )
        except PapermillExecutionError as error:
            status["notebooks"][key] = {
                "status": "failed", "seconds": round(time.perf_counter() - start, 1),
                "cell": error.exec_count, "error": f"{error.ename}: {error.evalue}", "parameters": params,
                "outputs": _written(run_dir, before),
            }
            _write_status(run_dir, status)
            raise RunFailed(
                f"{path.name}{f' (task {task})' if task else ''} failed in cell {error.exec_count}: {error.ename}: "
                f"{error.evalue} (executed notebook: {executed}; continue with --resume {run_dir})"
            ) from None
        status["notebooks"][key] = {"status": "done", "seconds": round(time.perf_counter() - start, 1), "parameters": params,
                                    "outputs": _written(run_dir, before)}
        _write_status(run_dir, status)
    status["finished"] = datetime.now().isoformat(timespec="seconds")
    _write_status(run_dir, status)
    write_report(run_dir)
    return run_dir


def _paper_table(run_dir: Path) -> dict | None:
    """Notebook 06's summary record (its paper-shaped table and average gains), None before 06 ran."""
    from nlu_helpers.results import load_results

    summary = [r for r in load_results(run_dir) if r.get("stage") == "results-table" and r.get("table")]
    return summary[-1] if summary else None


def write_report(run_dir: Path) -> Path:
    """A short Markdown report: what ran, how long, and every evaluation's main number."""
    from nlu_helpers.metrics import main_score
    from nlu_helpers.results import load_results
    from nlu_helpers.tasks import get_task

    status = _status(run_dir)
    lines = [f"# Workbook run `{run_dir.name}`", "", f"Profile: **{status.get('profile')}**; "
             f"started {status.get('started')}, finished {status.get('finished', '(not finished)')}.", "",
             "| notebook | status | seconds |", "|---|---|---|"]
    for name, entry in status.get("notebooks", {}).items():
        lines.append(f"| {name} | {entry['status']} | {entry.get('seconds', '')} |")
    evaluations = [r for r in load_results(run_dir) if "metrics" in r and "task" in r]
    if evaluations:
        lines += ["", "| stage | task | split | mode | k | main metric | value | unparseable | n |", "|---|---|---|---|---|---|---|---|---|"]
        for r in evaluations:
            try:
                metric, value = get_task(r["task"]).main_metric, f"{main_score(r['task'], r['metrics']):.4f}"
            except (KeyError, ValueError):
                metric, value = "", ""
            mode = r.get("mode", "") + (" + calibration" if r.get("calibrated") else "")
            lines.append(f"| {r.get('stage', '')} | {r['task']} | {r.get('split', '')} | {mode} | {r.get('k', '')} | "
                         f"{metric} | {value} | {r.get('unparseable', '')} | {r.get('n', '')} |")
    summary = _paper_table(run_dir)
    if summary:  # notebook 06 ran: its paper-shaped table (generation mode) and the gains on the average
        from nlu_helpers.report import table_markdown

        lines += ["", f"## The paper's table ({summary.get('mode', 'generate')} mode)", "",
                  table_markdown(summary["table"], summary.get("average_gains") or ())]
    figures = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").exists() else []
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f.stem}](figures/{f.name})" for f in figures]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


README_BLOCK = "<!-- run-table: {profile} -->", "<!-- /run-table -->"  # where a profile's table sits in a README


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def readme_table(run_dir: Path) -> str:
    """Notebook 06's paper-shaped table with its average gains, and a line of what the run took
    (notebook time in all and per notebook number): the block ``--readme`` puts in a README."""
    from nlu_helpers.report import table_markdown

    summary = _paper_table(run_dir)
    if summary is None:
        raise ValueError(f"{run_dir} has no paper-shaped table: notebook 06 has not finished there")
    status = _status(run_dir)
    per_number: dict[str, float] = {}
    for key, entry in status.get("notebooks", {}).items():
        if entry.get("status") == "done":
            number = key.split("_", 1)[0]
            per_number[number] = per_number.get(number, 0.0) + float(entry.get("seconds", 0.0))
    took = ", ".join(f"{number} {_minutes(seconds)}" for number, seconds in per_number.items())
    return (table_markdown(summary["table"], summary.get("average_gains") or ()) + "\n\n"
            f"Filled by the run `{run_dir.name}` (profile {status.get('profile')}, finished "
            f"{status.get('finished', '(not finished)')}): {sum(per_number.values()) / 60:.1f} minutes of notebook "
            f"time ({took}).")


def fill_readme(run_dir: Path, readme: Path) -> bool:
    """Replace the README's block for the run's profile (between ``<!-- run-table: PROFILE -->`` and
    ``<!-- /run-table -->``) with the run's table; False, and the README untouched, when it has none."""
    from nlu_helpers.results import write_atomic

    begin, end = README_BLOCK[0].format(profile=_status(run_dir).get("profile")), README_BLOCK[1]
    text = readme.read_text(encoding="utf-8")
    if begin not in text:
        return False
    head, rest = text.split(begin, 1)
    if end not in rest:
        raise ValueError(f"{readme}: {begin} has no {end} after it")
    write_atomic(readme, head + begin + "\n" + readme_table(run_dir) + "\n" + end + rest.split(end, 1)[1])
    return True


def main(args) -> int:
    """The ``run`` command (arguments parsed in ``nlu_helpers.cli``): 0 done, 1 a notebook failed,
    2 bad settings (an unknown parameter, a folder made with other settings and no ``--force``)."""
    try:
        run_dir = run(
            args.profile, run_dir=Path(args.output) if args.output else None,
            resume=Path(args.resume) if args.resume else None, only=args.only, skip=args.skip,
            overrides=parse_overrides(args.param), force=getattr(args, "force", False),
        )
    except RunFailed as error:
        print(f"run: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"run: {error}", file=sys.stderr)
        return 2
    status = _status(run_dir)
    ran, done = len(status.get("ran", [])), sum(e["status"] == "done" for e in status["notebooks"].values())
    what = f"ran {ran} notebook(s), {done - ran} already done here" if ran else "nothing to run: every notebook was already done here with these settings"
    print(f"run: done ({what}); report at {run_dir / 'report.md'}")
    readme = getattr(args, "readme", None)
    if readme:
        try:
            filled = fill_readme(run_dir, Path(readme))
        except ValueError as error:
            print(f"run: {error}", file=sys.stderr)
            return 2
        print(f"run: {readme}'s table for profile {status.get('profile')} filled from this run (git diff shows what changed)"
              if filled else f"run: {readme} has no table for profile {status.get('profile')}; left as it was")
    return 0
