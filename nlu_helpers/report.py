"""The paper-style results table, the paper's own numbers, and gains with confidence intervals.

Reads the results files every notebook writes (``nlu_helpers.results``); nothing here
is typed in except the paper's reported rows, which are shown *beside* ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from nlu_helpers import metrics as metrics_lib
from nlu_helpers.results import RESULTS
from nlu_helpers.tasks import get_task

STAGES = ("zero-shot", "few-shot", "sft", "ppo", "encoder")

# The paper's GLUE test-server averages (LLaMA2-7B-chat) and BERT's GLUE test numbers (paper-facts).
PAPER_GLUE_AVERAGE = {
    "zero-shot": 46.1, "few-shot": 58.7, "sft": 78.5, "ppo": 84.8, "ppo multi-task": 82.9,
    "BERT-base": 79.6, "BERT-large": 82.1,
}
BERT_GLUE = {
    "BERT-base": {"mnli-m": 84.6, "mnli-mm": 83.4, "qqp": 71.2, "qnli": 90.5, "sst2": 93.5, "cola": 52.1,
                  "stsb": 85.8, "mrpc": 88.9, "rte": 66.4, "average": 79.6},
    "BERT-large": {"mnli-m": 86.7, "mnli-mm": 85.9, "qqp": 72.1, "qnli": 92.7, "sst2": 94.9, "cola": 60.5,
                   "stsb": 86.5, "mrpc": 89.3, "rte": 70.1, "average": 82.1},
}
# The columns BERT's GLUE average uses (WNLI left out), with the metric each column reads.
GLUE_AVERAGE_COLUMNS = {
    "mnli-m": "accuracy", "mnli-mm": "accuracy", "qqp": "f1", "qnli": "accuracy", "sst2": "accuracy",
    "cola": "mcc", "stsb": "spearman", "mrpc": "f1", "rte": "accuracy",
}


def column_of(record: Mapping) -> str:
    """The table column for a result: the task, with MNLI split into -m and -mm."""
    task = record["task"]
    split = record.get("split") or ""
    if task == "mnli":
        return "mnli-mm" if "mismatched" in split else "mnli-m"
    return task


def pick(records: Iterable[Mapping], *, mode: str = "generate", calibrated: bool = False) -> list[dict]:
    """Evaluation records of one reading (the paper's: generation mode, uncalibrated).

    The encoder baseline has its own mode and is always kept.
    """
    chosen = []
    for r in records:
        if "metrics" not in r or r.get("stage") not in STAGES:
            continue
        if r["stage"] == "encoder" or (r.get("mode") == mode and bool(r.get("calibrated")) == calibrated):
            chosen.append(dict(r))
    return chosen


def paper_table(records: Iterable[Mapping], *, scale: float = 100.0) -> dict[str, dict[str, float]]:
    """``table[stage][column]`` = the task's main metric (x100), plus ``average`` the paper's way.

    The average follows BERT's GLUE convention (see ``GLUE_AVERAGE_COLUMNS``) when all its
    columns are present; otherwise it is the mean of the columns there are, and
    ``average_over`` says which.
    """
    table: dict[str, dict[str, float]] = {}
    for r in records:
        column = column_of(r)
        metric = GLUE_AVERAGE_COLUMNS.get(column) or get_task(r["task"]).main_metric
        table.setdefault(r["stage"], {})[column] = round(float(r["metrics"][metric]) * scale, 1)
    for stage, row in table.items():
        glue = [row[c] for c in GLUE_AVERAGE_COLUMNS if c in row]
        if len(glue) == len(GLUE_AVERAGE_COLUMNS):
            row["average"] = round(float(np.mean(glue)), 1)
        elif row:
            row["average"] = round(float(np.mean(list(row.values()))), 1)
    return {stage: table[stage] for stage in STAGES if stage in table}


def load_predictions(run_dir: str | Path, record: Mapping) -> list[dict]:
    path = Path(run_dir) / RESULTS / f"{record['name']}.predictions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def paired_gain(
    task,
    predictions_a: Sequence,
    predictions_b: Sequence,
    references: Sequence,
    *,
    metric: str | None = None,
    groups: Sequence | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Gain of B over A on the same rows, with a paired bootstrap interval.

    Both systems are resampled with the *same* row indices, so the interval reflects the
    difference between them, not each one's own noise.
    """
    task = get_task(task)
    metric = metric or task.main_metric
    if not len(predictions_a) == len(predictions_b) == len(references):
        raise ValueError(
            f"paired gain needs the same rows: got {len(predictions_a)}, {len(predictions_b)} predictions "
            f"and {len(references)} references"
        )
    def score(index, preds):
        sub_groups = None if groups is None else [groups[i] for i in index]
        return metrics_lib.compute(task, [preds[i] for i in index], [references[i] for i in index], groups=sub_groups)[metric]

    everything = list(range(len(references)))
    gain = score(everything, predictions_b) - score(everything, predictions_a)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_resamples):
        index = rng.integers(0, len(references), len(references)).tolist()
        samples.append(score(index, predictions_b) - score(index, predictions_a))
    tail = (1 - level) / 2 * 100
    return {"gain": float(gain), "low": float(np.percentile(samples, tail)), "high": float(np.percentile(samples, 100 - tail)),
            "metric": metric, "n": len(references)}


def gains(run_dir: str | Path, records: Sequence[Mapping], pairs: Sequence[tuple[str, str]], **kwargs) -> list[dict]:
    """Paired gains (B - A) for each (stage A, stage B) pair on every task both evaluated on the same rows."""
    by_key = {(r["stage"], r["task"], r.get("split")): r for r in records}
    out = []
    for stage_a, stage_b in pairs:
        for (stage, task, split), a in by_key.items():
            if stage != stage_a or (stage_b, task, split) not in by_key:
                continue
            b = by_key[(stage_b, task, split)]
            the_task = get_task(task)
            if the_task.kind == "record" or the_task.name == "axg":  # per-query / per-pair units: not resampled per row
                continue
            pa, pb = load_predictions(run_dir, a), load_predictions(run_dir, b)
            if [p["index"] for p in pa] != [p["index"] for p in pb]:
                continue
            refs = [p["label"] for p in pa]
            groups = [tuple(p["idx"][k] for k in the_task.group_by) for p in pa] if the_task.group_by else None
            result = paired_gain(task, [p["prediction"] for p in pa], [p["prediction"] for p in pb], refs,
                                 groups=groups, **kwargs)
            out.append({"comparison": f"{stage_b} - {stage_a}", "task": task, "split": split, **result})
    return out
