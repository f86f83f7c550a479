"""Task files: your own task in a YAML file, usable wherever a task name goes.

```yaml
name: my-reviews
instruction: "Task: decide whether the product review is positive or negative."
fields: [review]                 # columns shown in the prompt, in this order ({column: shown name} also works)
label_column: label              # default "label"
labels:                          # value in the file -> the word the model answers with
  neg: Negative                  # label ids follow this order (0, 1, ...)
  pos: Positive
data_files: {train: train.csv, validation: dev.csv, test: test.csv}   # CSV, JSONL or Parquet
metrics: [accuracy, f1]          # default [accuracy]
```

``labels`` may be a plain list of words when the file holds label ids 0..n-1.
``dataset: owner/name`` (with ``config:`` and ``splits: {ours: hub's}``) stands in for
``data_files``, and so does ``bigbench: <task>`` for the offline suite's BIG-bench tasks
(:mod:`nlu_helpers.suite`: the rows are extracted from the ``bigbench==1.0.0`` source archive,
fetched through the package index the first time). Paths are relative to the task file. A test split may lack the
label column (hidden labels). ``get_task("my-reviews.yaml")`` reads the file, checks
it and its data (every problem at once, in a :class:`~nlu_helpers.tasks.TaskFileError`),
and registers the task under its name; :func:`check_task_file` reports on a file.

The task's *name* then works in this process and in every process it starts
(notebook kernels, ``accelerate launch`` workers): loaded files are listed in the
environment variable ``NLU_WORKBOOK_TASK_FILES``, which ``get_task`` reads for a
name it does not know.
"""

from __future__ import annotations

import difflib
import os
import re
from collections import Counter
from pathlib import Path

import yaml

from nlu_helpers import data, tasks
from nlu_helpers.tasks import DATA_FORMATS, STANDARD_SPLITS, Task, TaskFileError

KEYS = ("name", "title", "instruction", "fields", "label_column", "labels", "data_files",
        "dataset", "config", "splits", "bigbench", "metrics")
REQUIRED = ("name", "instruction", "fields", "labels")
METRICS = ("accuracy", "f1", "mcc")
_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")


class _Loader(yaml.SafeLoader):
    """Safe YAML without 1.1 booleans (``Yes``, ``No``, ``True`` are label words) and with duplicate keys refused."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _closest(key: str) -> str:
    match = difflib.get_close_matches(key, KEYS, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _read_yaml(path: Path) -> tuple[dict | None, list[str]]:
    if not path.is_file():
        return None, [f"{str(path)!r} does not exist or is not a file"]
    try:
        spec = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark, context = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        if context is not None and getattr(err, "context", None):
            reason += f" ({err.context} on line {context.line + 1})"
        return None, [f"not valid YAML: {where}{reason}"]
    if not isinstance(spec, dict):
        return None, [f"the file must hold a mapping of keys ({', '.join(REQUIRED)}, ...), got {type(spec).__name__}"]
    return spec, []


def _word(value) -> object:
    """A label word as written; numbers become text ("1" stars), other types stay to be refused."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _labels(spec: dict, problems: list[str]) -> tuple[list, tuple[str, ...] | None]:
    """The label words in label-id order, and the file's label values (None: ids 0..n-1)."""
    labels = spec.get("labels")
    if isinstance(labels, list):
        return [_word(w) for w in labels], None
    if isinstance(labels, dict):
        values = [data.label_key(k) for k in labels]
        doubled = sorted({v for v in values if values.count(v) > 1 and v is not None})
        if doubled or None in values:
            problems.append(f"labels: the label values {sorted(map(str, labels))} must be distinct and not blank"
                            + (f" ({', '.join(doubled)} appear twice once written as numbers)" if doubled else ""))
        return [_word(w) for w in labels.values()], tuple(v or "" for v in values)
    problems.append(f"labels must map each label value in the file to a word ({{neg: Negative, pos: Positive}}) "
                    f"or list the words for ids 0, 1, ...; got {labels!r}")
    return [], None


def _fields(spec: dict, problems: list[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    fields = spec.get("fields")
    if isinstance(fields, list):
        fields = {column: str(column).replace("_", " ").capitalize() for column in fields}
    if not isinstance(fields, dict) or not fields or not all(isinstance(c, str) and c and isinstance(s, str) and s
                                                            for c, s in fields.items()):
        problems.append(f"fields must list the columns the prompt shows, e.g. [review]; got {spec.get('fields')!r}")
        return ()
    return tuple((shown, (column,)) for column, shown in fields.items())


def _bigbench_files(name, problems: list[str]) -> dict[str, str] | None:
    from nlu_helpers import assets, suite

    if name not in suite.BIGBENCH_TASKS:
        problems.append(f"bigbench: {name!r} is not one of the suite's BIG-bench tasks: {', '.join(suite.BIGBENCH_TASKS)}")
        return None
    try:
        return suite.bigbench_files(name)
    except assets.AssetUnavailable as error:
        problems.append(f"bigbench: {error}")
        return None


def _data_files(spec: dict, folder: Path, problems: list[str]) -> dict[str, str] | None:
    files = spec.get("data_files")
    if files is None:
        return _bigbench_files(spec["bigbench"], problems) if "bigbench" in spec else None
    if not isinstance(files, dict) or not files or not all(isinstance(f, str) and f for f in files.values()):
        problems.append(f"data_files must map split names to files, e.g. {{train: train.csv}}; got {files!r}")
        return None
    resolved = {}
    for split, name in files.items():
        path = (folder / Path(name).expanduser()).resolve()
        if path.suffix.lower() not in DATA_FORMATS:
            problems.append(f"data_files: {name!r} (split {split!r}) has format {path.suffix!r}; allowed: {', '.join(DATA_FORMATS)}")
        elif not path.is_file():
            problems.append(f"data_files: {name!r} (split {split!r}) does not exist (looked for {str(path)!r})")
        resolved[str(split)] = str(path)
    return resolved


def _build(path: Path, spec: dict) -> tuple[Task | None, list[str]]:
    """The Task a parsed file describes, or the problems of the file itself (not its data)."""
    problems = [f"unknown key {key!r}{_closest(str(key))}; allowed: {', '.join(KEYS)}" for key in spec if key not in KEYS]
    problems += [f"missing key {key!r}" for key in REQUIRED if spec.get(key) in (None, "", [], {})]
    name = spec.get("name")
    key = tasks._normalise(str(name)) if isinstance(name, str) else ""
    if name is not None and (not _NAME.fullmatch(key) or tasks.is_task_file(key)):
        problems.append(f"name {name!r} must be letters, digits, '-' or '.' (it names output files), not a file name")
    elif key in tasks._ALIASES and tasks.TASKS[tasks._ALIASES[key]].source != str(path):
        taken = tasks.TASKS[tasks._ALIASES[key]]
        problems.append(f"name {name!r} is taken by task {taken.name!r} "
                        f"({'from ' + repr(taken.source) if taken.source else taken.benchmark}); pick another name")
    instruction = spec.get("instruction")
    if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
        problems.append(f"instruction must be the task's text for the prompt, got {instruction!r}")
    fields = _fields(spec, problems) if "fields" in spec else ()
    words, values = _labels(spec, problems) if "labels" in spec else ([], None)
    if "labels" in spec:
        problems += [f"labels: {p}" for p in tasks.label_word_problems(words)]
    label_column = spec.get("label_column", "label")
    if not isinstance(label_column, str) or not label_column:
        problems.append(f"label_column must be a column name, got {label_column!r}")
    metrics = spec.get("metrics", ["accuracy"])
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) and m in METRICS for m in metrics):
        problems.append(f"metrics {metrics!r}: allowed are {', '.join(METRICS)} (the first is the main metric)")
    data_files = _data_files(spec, path.parent, problems)
    dataset, config, splits = spec.get("dataset"), spec.get("config"), spec.get("splits")
    sources = [key for key in ("data_files", "dataset", "bigbench") if spec.get(key) is not None]
    if len(sources) != 1:
        problems.append("give one of data_files (files next to the task file), dataset (a hub data set id) or bigbench "
                        f"(a suite task); got {', '.join(sources) or 'none'}")
    if dataset is not None and (not isinstance(dataset, str) or not dataset.strip()):
        problems.append(f"dataset must be a hub data set id such as 'owner/name', got {dataset!r}")
    if splits is not None and (dataset is None or not isinstance(splits, dict) or not splits):
        problems.append(f"splits maps our split names to the hub data set's, with dataset only; got {splits!r}")
    if problems:
        return None, problems
    splits = {str(s): str(h) for s, h in (splits or ({s: s for s in data_files} if data_files else STANDARD_SPLITS)).items()}
    task = Task(
        name=key, title=str(spec.get("title") or name), benchmark="custom", description=instruction.strip(),
        fields=fields, label_words=tuple(words), metrics=tuple(metrics), main_metric=metrics[0],
        splits=splits, eval_splits=("validation",) if "validation" in splits else (),
        test_splits=("test",) if "test" in splits else (), data_files=data_files,
        source_label_column=label_column, label_values=values,
        hub_id=dataset, hub_config=None if config is None else str(config), source=str(path),
    )
    return task, []


def _check_data(task: Task) -> dict[str, tuple[list[dict], list[str]]]:
    """Every split's checked rows and problems."""
    found = {}
    for split in task.splits:
        try:
            rows, problems = data.custom_split(task, split)[:2]
        except (ValueError, OSError, KeyError, RuntimeError) as err:
            rows, problems = [], [str(err.args[0] if isinstance(err, KeyError) and err.args else err).splitlines()[0]]
        found[split] = (rows, problems)
    return found


def _stamp(path: Path, task: Task | None) -> tuple:
    """What must stay the same for a loaded task file to be reused: its bytes' and its data's stat."""
    files = [path, *(Path(f) for f in ((task.data_files or {}).values() if task else ()))]
    return tuple((os.stat(f).st_mtime_ns, os.stat(f).st_size) if f.exists() else None for f in files)


_LOADED: dict[str, tuple[tuple, Task]] = {}
ENV_VAR = tasks.TASK_FILES_ENV  # loaded task files, os.pathsep-separated


def _listed() -> list[str]:
    return [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]


def load_listed() -> list[str]:
    """Load the task files a parent process listed in ``NLU_WORKBOOK_TASK_FILES``; their problems.

    Files that no longer exist are skipped; a file that fails its checks is
    reported (one line each), not raised, since the name asked for may be elsewhere.
    """
    failures = []
    for path in _listed():
        if path in _LOADED or not Path(path).is_file():
            continue
        try:
            load_task_file(path)
        except TaskFileError as err:
            failures.append(f"{path}: {'; '.join(err.problems)}")
    return failures


def load_task_file(path: str | os.PathLike) -> Task:
    """The task a file describes, checked with its data and registered under its name.

    Raises :class:`~nlu_helpers.tasks.TaskFileError` listing every problem; nothing
    is registered then. A hub data set is checked when it is loaded, not here.
    """
    path = Path(path).expanduser().resolve()
    cached = _LOADED.get(str(path))
    if cached is not None and cached[0] == _stamp(path, cached[1]):
        return cached[1]
    spec, problems = _read_yaml(path)
    task, problems = _build(path, spec) if spec is not None else (None, problems)
    if task is not None and task.data_files:
        problems = [p for _, split_problems in _check_data(task).values() for p in split_problems]
    if task is None or problems:
        raise TaskFileError(path, problems)
    tasks.TASKS[task.name] = task
    tasks._index(task)
    _LOADED[str(path)] = (_stamp(path, task), task)
    if str(path) not in _listed():
        os.environ[ENV_VAR] = os.pathsep.join([*_listed(), str(path)])
    return task


def check_task_file(path: str | os.PathLike) -> str:
    """A report on a task file: one prompt, the label counts per split, and every problem with its row.

    The last line says "ok: no problems" or how many there are. Nothing is registered.
    """
    path = Path(path).expanduser().resolve()
    spec, problems = _read_yaml(path)
    task, problems = _build(path, spec) if spec is not None else (None, problems)
    lines = [f"task file {str(path)!r}"]
    if task is not None:
        words = task.answer_words
        mapping = (", ".join(f"{v} -> {w}" for v, w in zip(task.label_values, words)) if task.label_values
                   else ", ".join(f"{i} -> {w}" for i, w in enumerate(words)))
        lines.append(f"task {task.name!r}: labels {mapping}; fields {', '.join(n[0] for _, n in task.fields)}; "
                     f"metrics {', '.join(task.metrics)}")
        checked = _check_data(task)
        example = None
        for split, (rows, split_problems) in checked.items():
            problems += split_problems
            counts = Counter(row["label"] for row in rows)
            shown = ", ".join(f"{w} {counts.get(i, 0)}" for i, w in enumerate(words))
            shown += f", {counts[-1]} without a label (hidden)" if counts.get(-1) else ""
            shown += f", {counts[None]} with a bad label" if counts.get(None) else ""
            lines.append(f"{split}: {len(rows)} rows: {shown}" if rows else f"{split}: no rows read")
            if example is None and rows and not split_problems:
                example = (split, rows[0])
        if example is not None:
            split, row = example
            target = task.target(row) if row["label"] != -1 else " (no label)"
            lines += ["", f"one prompt ({split}, row 1), then its answer:", task.build_prompt(row) + target, ""]
    count = len(problems)
    if any(", row " in p for p in problems):
        lines.append("problems (rows count from 1, a CSV header not counted):")
    lines += [f"  - {p}" for p in problems]
    lines.append("ok: no problems" if not count else f"{count} problem{'s' if count != 1 else ''}")
    return "\n".join(lines)
