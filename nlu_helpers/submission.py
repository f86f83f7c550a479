"""Test-set submission files in the formats the GLUE and SuperGLUE servers accept.

The paper's numbers (and the BERT rows it compares with) are test-set scores from
the leaderboard servers: the hub's test splits carry no labels (``label == -1``),
so the only way to get a comparable number is to upload predictions. This module
writes one file per task and zips a folder of them the way the servers expect.

Formats, checked against public code that has been accepted by the servers:

GLUE (gluebenchmark.com): one TSV per task with the header ``index<TAB>prediction``;
the index is the test row's ``idx``. File names and label strings follow jiant's
formatter (nyu-mll/jiant ``jiant/scripts/postproc/glue_submission_formatter.py`` and
``jiant/scripts/benchmarks/benchmarks.py`` ``GlueBenchmark``; labels from
``GlueMixin.get_glue_preds`` in ``jiant/tasks/core.py``, which writes
``str(LABELS[pred]).lower()``, with ``LABELS`` = ``["0", "1"]`` for CoLA,
``["contradiction", "entailment", "neutral"]`` for MNLI and AX
(``glue_diagnostics.py`` subclasses MNLI), ``["entailment", "not_entailment"]`` for
QNLI/RTE; STS-B overrides it with ``str(round(pred, 3))`` in ``stsb.py``).
Hugging Face's ``run_glue.py`` writes the same header (``"index\\tprediction"``) and
``f"{item:3.3f}"`` for STS-B. We map the hub's label ids to those strings:

=========================  ==============  =============================================
task                       file            prediction
=========================  ==============  =============================================
CoLA, SST-2, MRPC, QQP     CoLA.tsv, ...   ``0`` / ``1`` (the hub's ids, 1 = acceptable,
WNLI                                       positive, equivalent, duplicate, entailment)
STS-B                      STS-B.tsv       a float with 3 decimals, clipped to [0, 5]
MNLI (test_matched)        MNLI-m.tsv      ``entailment`` / ``neutral`` / ``contradiction``
MNLI (test_mismatched)     MNLI-mm.tsv     as MNLI-m
AX                         AX.tsv          as MNLI
QNLI, RTE                  QNLI.tsv, ...   ``entailment`` / ``not_entailment``
=========================  ==============  =============================================

SuperGLUE (super.gluebenchmark.com): one JSONL per task, ``{"idx": ..., "label": ...}``
per line. File names from jiant's ``SuperglueBenchmark.BENCHMARK_SUBMISSION_FILENAMES``
(``jiant/scripts/benchmarks/benchmarks.py``); labels from each task's
``super_glue_format_preds`` in ``jiant/tasks/lib/``: BoolQ and WiC write
``str(LABELS[pred]).lower()`` with ``LABELS = [False, True]`` (``"false"``/``"true"``),
WSC writes ``str(LABELS[pred])`` (``"False"``/``"True"``), CB and RTE write the label
string itself (AX-b and AX-g are RTE subclasses: ``"entailment"``/``"not_entailment"``),
COPA writes ``CHOICE_KEYS[pred]`` = ``0``/``1``. MultiRC nests answers per paragraph
and question: ``{"idx": p, "passage": {"questions": [{"idx": q, "answers": [{"idx": a,
"label": 0 or 1}]}]}}`` (``multirc.py``; the same shape as the server's sample file
quoted in jiant-dev/jiant-dev issue #108). ReCoRD writes ``{"idx": query idx,
"label": entity text}`` (``ReCordEvaluationScheme.get_preds_from_accumulator`` in
``jiant/tasks/evaluate/core.py``).

Unparseable predictions: the servers need a label for every test row, so a ``None``
prediction is filled with a seeded random label here (a random label id, a uniform
STS-B score, or a random candidate entity for ReCoRD) and the number filled is
printed. This is the only place in the package where a fill-in happens: metrics and
results files always count unparseable answers as their own thing.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from nlu_helpers.results import write_atomic
from nlu_helpers.tasks import Task, get_task

__all__ = [
    "GLUE_FILES",
    "SUPERGLUE_FILES",
    "SUBMISSION_TASKS",
    "submission_filename",
    "fill_unparseable",
    "write_submission",
    "zip_submission",
]

# task name -> file name; MNLI has one file per test split
GLUE_FILES: dict[str, str] = {
    "cola": "CoLA.tsv",
    "sst2": "SST-2.tsv",
    "mrpc": "MRPC.tsv",
    "qqp": "QQP.tsv",
    "stsb": "STS-B.tsv",
    "mnli:test_matched": "MNLI-m.tsv",
    "mnli:test_mismatched": "MNLI-mm.tsv",
    "qnli": "QNLI.tsv",
    "rte": "RTE.tsv",
    "wnli": "WNLI.tsv",
    "ax": "AX.tsv",
}
SUPERGLUE_FILES: dict[str, str] = {
    "boolq": "BoolQ.jsonl",
    "cb": "CB.jsonl",
    "copa": "COPA.jsonl",
    "multirc": "MultiRC.jsonl",
    "record": "ReCoRD.jsonl",
    "superglue-rte": "RTE.jsonl",
    "wic": "WiC.jsonl",
    "wsc": "WSC.jsonl",
    "axb": "AX-b.jsonl",
    "axg": "AX-g.jsonl",
}
SUBMISSION_TASKS = tuple(dict.fromkeys(key.split(":")[0] for key in (*GLUE_FILES, *SUPERGLUE_FILES)))

# label strings per task, indexed by the hub's label ids (see the module docstring for sources)
_NLI3_GLUE = ("entailment", "neutral", "contradiction")  # hub MNLI/AX: 0 ent, 1 neutral, 2 contra
_ENTAIL2 = ("entailment", "not_entailment")  # hub QNLI/RTE/AX-b/AX-g: 0 = entailment
LABEL_STRINGS: dict[str, tuple[Any, ...]] = {
    "cola": ("0", "1"),
    "sst2": ("0", "1"),
    "mrpc": ("0", "1"),
    "qqp": ("0", "1"),
    "wnli": ("0", "1"),
    "mnli": _NLI3_GLUE,
    "ax": _NLI3_GLUE,
    "qnli": _ENTAIL2,
    "rte": _ENTAIL2,
    "boolq": ("false", "true"),
    "wic": ("false", "true"),
    "wsc": ("False", "True"),
    "cb": ("entailment", "contradiction", "neutral"),  # hub CB: 0 ent, 1 contra, 2 neutral
    "copa": (0, 1),
    "multirc": (0, 1),
    "superglue-rte": _ENTAIL2,
    "axb": _ENTAIL2,
    "axg": _ENTAIL2,
}
STSB_RANGE = (0.0, 5.0)


# -- names ------------------------------------------------------------------------------------

def _split_name(rows: Any, split: str | None) -> str | None:
    """The split the rows came from: the argument, else a datasets.Dataset's own ``split``."""
    if split is not None:
        return str(split)
    found = getattr(rows, "split", None)
    return str(found) if found is not None else None


def submission_filename(task: str | Task, split: str | None = None) -> str:
    """The file name the server expects for ``task`` (MNLI: ``split`` picks -m or -mm)."""
    task = get_task(task)
    if task.name not in SUBMISSION_TASKS:
        raise ValueError(
            f"task {task.name!r} has no leaderboard submission; allowed tasks: {', '.join(SUBMISSION_TASKS)}"
        )
    if task.name == "mnli":
        allowed = ("test_matched", "test_mismatched")
        if split not in allowed:
            raise ValueError(
                f"MNLI has two test files; split {split!r} does not say which: allowed {allowed} "
                "(pass split=..., or rows loaded with data.load_split('mnli', 'test_matched'))"
            )
        return GLUE_FILES[f"mnli:{split}"]
    return GLUE_FILES.get(task.name) or SUPERGLUE_FILES[task.name]


# -- predictions --------------------------------------------------------------------------------

def _check_prediction(task: Task, value: Any, i: int) -> None:
    if value is None:
        return
    if task.kind == "regression":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
        allowed = "a finite number (clipped to [0, 5])"
    elif task.kind == "record":
        ok = isinstance(value, str)
        allowed = "the chosen entity string"
    else:
        n = len(LABEL_STRINGS[task.name])
        ok = _is_int(value) and 0 <= int(value) < n
        allowed = f"a label id 0..{n - 1} ({', '.join(f'{k}={w}' for k, w in enumerate(task.answer_words))})"
    if not ok:
        raise ValueError(f"task {task.name!r}: prediction {value!r} at row {i} is not allowed; allowed is {allowed} or None")


def _is_int(value: Any) -> bool:
    try:
        import numpy as np

        integer_types: tuple[type, ...] = (int, np.integer)
    except ImportError:  # pragma: no cover
        integer_types = (int,)
    return isinstance(value, integer_types) and not isinstance(value, bool)


def _random_prediction(task: Task, row: Mapping, rng: random.Random) -> Any:
    if task.kind == "regression":
        return rng.uniform(*STSB_RANGE)
    if task.kind == "record":
        entities = list(dict.fromkeys(row.get("entities") or []))
        if not entities:
            raise ValueError(f"record: row idx={row.get('idx')!r} has no candidate entities to fill an unparseable answer with")
        return rng.choice(entities)
    return rng.randrange(len(LABEL_STRINGS[task.name]))


def fill_unparseable(
    task: str | Task, predictions: Sequence, rows: Sequence[Mapping], *, seed: int = 0
) -> tuple[list, int]:
    """Predictions with every ``None`` replaced by a seeded random label, and how many were replaced.

    Only for submission files: the servers reject a file with a missing label.
    """
    task = get_task(task)
    if len(predictions) != len(rows):
        raise ValueError(f"predictions and rows differ in length: {len(predictions)} predictions, {len(rows)} rows")
    rng = random.Random(seed)
    filled, count = [], 0
    for i, (prediction, row) in enumerate(zip(predictions, rows)):
        _check_prediction(task, prediction, i)
        if prediction is None:
            prediction = _random_prediction(task, row, rng)
            count += 1
        filled.append(prediction)
    return filled, count


# -- lines ----------------------------------------------------------------------------------------

def _idx(task: Task, row: Mapping, i: int) -> Any:
    if "idx" not in row:
        raise KeyError(f"task {task.name!r}: row {i} has no 'idx' field (fields: {sorted(row)}); use the hub's test rows")
    return row["idx"]


def _plain_idx(task: Task, row: Mapping, i: int) -> int:
    idx = _idx(task, row, i)
    if not _is_int(idx):
        raise ValueError(f"task {task.name!r}: row {i} has idx {idx!r}; expected an integer")
    return int(idx)


def _glue_value(task: Task, prediction: Any) -> str:
    if task.kind == "regression":
        low, high = STSB_RANGE
        return f"{min(high, max(low, float(prediction))):.3f}"
    return LABEL_STRINGS[task.name][int(prediction)]


def _multirc_lines(task: Task, predictions: Sequence, rows: Sequence[Mapping]) -> list[dict]:
    """Answers nested under their question, questions under their paragraph, in first-seen order."""
    paragraphs: dict[int, dict[int, list[dict]]] = {}
    seen: set[tuple[int, int, int]] = set()
    for i, (prediction, row) in enumerate(zip(predictions, rows)):
        idx = _idx(task, row, i)
        if not isinstance(idx, Mapping) or not {"paragraph", "question", "answer"} <= set(idx):
            raise ValueError(
                f"multirc: row {i} has idx {idx!r}; expected {{'paragraph': .., 'question': .., 'answer': ..}} as on the hub"
            )
        key = (int(idx["paragraph"]), int(idx["question"]), int(idx["answer"]))
        if key in seen:
            raise ValueError(f"multirc: answer idx {dict(idx)} appears twice (row {i})")
        seen.add(key)
        answers = paragraphs.setdefault(key[0], {}).setdefault(key[1], [])
        answers.append({"idx": key[2], "label": LABEL_STRINGS["multirc"][int(prediction)]})
    return [
        {"idx": p, "passage": {"questions": [{"idx": q, "answers": answers} for q, answers in questions.items()]}}
        for p, questions in paragraphs.items()
    ]


def _superglue_lines(task: Task, predictions: Sequence, rows: Sequence[Mapping]) -> list[dict]:
    if task.name == "multirc":
        return _multirc_lines(task, predictions, rows)
    lines = []
    for i, (prediction, row) in enumerate(zip(predictions, rows)):
        if task.kind == "record":
            idx = _idx(task, row, i)
            if not isinstance(idx, Mapping) or "query" not in idx:
                raise ValueError(f"record: row {i} has idx {idx!r}; expected {{'passage': .., 'query': ..}} as on the hub")
            lines.append({"idx": int(idx["query"]), "label": prediction})
        else:
            lines.append({"idx": _plain_idx(task, row, i), "label": LABEL_STRINGS[task.name][int(prediction)]})
    return lines


def _check_unique(task: Task, keys: Sequence) -> None:
    seen: set = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"task {task.name!r}: idx {key!r} appears twice; each test row must appear once")
        seen.add(key)


# -- public entry points -------------------------------------------------------------------------

def write_submission(
    task: str | Task,
    predictions: Sequence,
    rows: Sequence[Mapping],
    out_dir: str | Path,
    *,
    split: str | None = None,
    seed: int = 0,
) -> Path:
    """Write ``task``'s test predictions in the server's format into ``out_dir``; returns the file.

    ``predictions``: one per row, as the evaluation engine gives them (hub label ids,
    STS-B floats, ReCoRD entity strings, or ``None`` when unparseable). ``rows``: the
    hub's test rows in the same order (their ``idx`` is the server's key). MNLI needs
    the split (``test_matched`` or ``test_mismatched``), from ``split`` or from a
    ``datasets.Dataset``'s own ``split``. Unparseable predictions get a seeded random
    label; the count is printed.
    """
    task = get_task(task)
    filename = submission_filename(task, _split_name(rows, split))
    rows = [dict(row) for row in rows]
    if len(predictions) != len(rows):
        raise ValueError(f"predictions and rows differ in length: {len(predictions)} predictions, {len(rows)} rows")
    if not rows:
        raise ValueError(f"no rows to write for task {task.name!r}")
    filled, count = fill_unparseable(task, predictions, rows, seed=seed)
    path = Path(out_dir) / filename

    if filename.endswith(".tsv"):
        indexes = [_plain_idx(task, row, i) for i, row in enumerate(rows)]
        _check_unique(task, indexes)
        lines = ["index\tprediction"] + [f"{i}\t{_glue_value(task, p)}" for i, p in zip(indexes, filled)]
        write_atomic(path, "\n".join(lines) + "\n")
    else:
        lines = _superglue_lines(task, filled, rows)
        if task.name != "multirc":
            _check_unique(task, [line["idx"] for line in lines])
        write_atomic(path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    note = f"; {count} unparseable filled with seeded random labels (seed {seed})" if count else ""
    print(f"submission: wrote {len(rows)} predictions to {path}{note}")
    return path


def zip_submission(folder: str | Path, zip_path: str | Path | None = None) -> Path:
    """Zip a folder of submission files as the server expects: the files at the archive's root.

    GLUE and SuperGLUE are different servers, so a folder must hold files of one
    benchmark only; files of a benchmark that are missing are named (a server may
    reject an incomplete upload). Default archive: ``<folder>.zip`` next to the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"submission folder {str(folder)!r} does not exist")
    glue, superglue = set(GLUE_FILES.values()), set(SUPERGLUE_FILES.values())
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    names = {p.name for p in files}
    unknown = names - glue - superglue
    if unknown:
        raise ValueError(
            f"{str(folder)!r} holds files no server accepts: {sorted(unknown)}; allowed: "
            f"GLUE {sorted(glue)} or SuperGLUE {sorted(superglue)}"
        )
    if not names:
        raise ValueError(f"{str(folder)!r} holds no submission files; write some with write_submission first")
    if names & glue and names & superglue:
        raise ValueError(
            f"{str(folder)!r} mixes GLUE files {sorted(names & glue)} and SuperGLUE files {sorted(names & superglue)}; "
            "they go to different servers: write them to two folders"
        )
    benchmark, expected = ("GLUE", glue) if names & glue else ("SuperGLUE", superglue)
    missing = sorted(expected - names)
    if missing:
        print(f"submission: {benchmark} files missing from the zip (the server may reject it): {missing}")
    target = Path(zip_path) if zip_path is not None else folder.with_suffix(".zip")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, arcname=path.name)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"submission: {benchmark} archive {target} with {len(files)} file(s)")
    return target
