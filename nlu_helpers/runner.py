"""The workbook's main job: execute the notebooks in order with papermill, under a profile.

``python -m nlu_helpers run --profile cpu-demo`` writes ``runs/<timestamp>-<profile>/``:
the executed notebooks, ``results/`` (every notebook's results files), ``figures/``,
``run.json`` (status and seconds per notebook) and ``report.md``.

A profile is a YAML parameter set shipped in ``nlu_helpers/profiles/``: ``parameters``
go to every notebook that declares them, ``notebooks.<name>`` to one notebook. A failed
notebook stops the run with the notebook, cell and error named; what finished is kept
and ``--resume RUN_DIR`` continues from the first unfinished notebook.
"""

from __future__ import annotations

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


def work_items(paths: Sequence[Path], profile: Mapping, overrides: Mapping) -> list[tuple[Path, str | None, str]]:
    """``(notebook, task, key)`` in run order. With a ``tasks`` list in the profile (or
    ``-p tasks=[...]``), every notebook that declares a ``task`` parameter runs once per
    task (key ``02_zero_few_shot:rte``); without one each notebook runs once (key = its name)."""
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
            items += [(path, name, f"{path.stem}:{name}") for name in names]
        else:
            items.append((path, None, path.stem))
    return items


def _status(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_status(run_dir: Path, status: dict) -> None:
    from nlu_helpers.results import write_atomic

    write_atomic(run_dir / "run.json", json.dumps(status, indent=2) + "\n")


def run(
    profile_name: str,
    *,
    run_dir: Path | None = None,
    resume: Path | None = None,
    only: Sequence[str] | None = None,
    skip: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    notebooks_folder: Path = NOTEBOOKS,
    progress: bool = True,
) -> Path:
    """Execute the notebooks; returns the run folder. Raises ``RunFailed`` on the first failure."""
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from tqdm.auto import tqdm

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
    paths = select(notebook_paths(notebooks_folder), only, skip)
    if not paths:
        raise ValueError("no notebook left to run after --only/--skip")
    if run_dir is None:
        run_dir = REPO_ROOT / "runs" / f"{datetime.now():%Y%m%d-%H%M%S}-{profile_name}"
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    status = _status(run_dir) or {
        "profile": profile_name, "started": datetime.now().isoformat(timespec="seconds"),
        "overrides": overrides, "only": list(only or []), "skip": list(skip or []), "notebooks": {},
    }
    _write_status(run_dir, status)

    items = work_items(paths, profile, overrides)
    bar = tqdm(items, desc=f"workbook ({profile_name})", unit="notebook", disable=not progress)
    for path, task, key in bar:
        entry = status["notebooks"].get(key, {})
        if entry.get("status") == "done":
            continue
        bar.set_postfix_str(key)
        params = parameters_for(path, profile_name, profile, {**overrides, **({"task": task} if task else {})}, run_dir)
        executed = run_dir / (path.name if task is None else f"{path.stem}-{task}.ipynb")
        start = time.perf_counter()
        status["notebooks"][key] = {"status": "running", "parameters": params}
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
            }
            _write_status(run_dir, status)
            raise RunFailed(
                f"{path.name}{f' (task {task})' if task else ''} failed in cell {error.exec_count}: {error.ename}: "
                f"{error.evalue} (executed notebook: {executed}; continue with --resume {run_dir})"
            ) from None
        status["notebooks"][key] = {"status": "done", "seconds": round(time.perf_counter() - start, 1), "parameters": params}
        _write_status(run_dir, status)
    status["finished"] = datetime.now().isoformat(timespec="seconds")
    _write_status(run_dir, status)
    write_report(run_dir)
    return run_dir


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
    figures = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").exists() else []
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f.stem}](figures/{f.name})" for f in figures]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(args) -> int:
    """The ``run`` command (arguments parsed in ``nlu_helpers.__main__``)."""
    try:
        run_dir = run(
            args.profile, run_dir=Path(args.output) if args.output else None,
            resume=Path(args.resume) if args.resume else None, only=args.only, skip=args.skip,
            overrides=parse_overrides(args.param),
        )
    except (RunFailed, ValueError) as error:
        print(f"run: {error}", file=sys.stderr)
        return 1
    print(f"run: done; report at {run_dir / 'report.md'}")
    return 0
