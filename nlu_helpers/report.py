"""The paper-style results table, the paper's own numbers, and gains with confidence intervals.

Reads the results files every notebook writes (``nlu_helpers.results``); nothing here
is typed in except the paper's reported rows, which are shown *beside* ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from nlu_helpers import metrics as metrics_lib
from nlu_helpers.results import RESULTS
from nlu_helpers.tasks import Task, get_task

STAGES = ("zero-shot", "few-shot", "sft", "ppo", "ppo-multi-task", "encoder")

# The paper's GLUE test-server averages (LLaMA2-7B-chat) and BERT's GLUE test numbers (paper-facts).
PAPER_GLUE_AVERAGE = {
    "zero-shot": 46.1, "few-shot": 58.7, "sft": 78.5, "ppo": 84.8, "ppo-multi-task": 82.9,
    "BERT-base": 79.6, "BERT-large": 82.1,
}
PAPER_ROW_OF_STAGE = {"zero-shot": "zero-shot", "few-shot": "few-shot", "sft": "sft", "ppo": "ppo",
                      "ppo-multi-task": "ppo-multi-task", "encoder": "BERT-base"}  # our stage -> the paper's row
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


def table_markdown(table: Mapping[str, Mapping[str, float]], average_gains: Sequence[Mapping] = ()) -> str:
    """The paper-shaped table as Markdown (a column per task, the average, the paper's average for the
    row), then the average gains with their paired-bootstrap intervals: what the README shows."""
    columns = list(dict.fromkeys(c for row in table.values() for c in row if c != "average"))
    lines = ["| stage | " + " | ".join(columns) + " | average | paper's average (7B, GLUE) |",
             "|---|" + "---|" * (len(columns) + 2)]
    for stage, row in table.items():
        cells = [f"{row[c]:.1f}" if c in row else "–" for c in columns]
        paper = PAPER_GLUE_AVERAGE.get(PAPER_ROW_OF_STAGE.get(stage, ""), "–")
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | **{row.get('average', float('nan')):.1f}** | {paper} |")
    if average_gains:
        lines += ["", "| on the average | gain (points) | 95% CI | tasks | rows |", "|---|---|---|---|---|"]
        lines += [f"| {g['comparison']} | {g['gain']:+.1f} | [{g['low']:+.1f}, {g['high']:+.1f}] | {g['tasks']} | {g['rows']} |"
                  for g in average_gains]
    return "\n".join(lines)


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


def paired_records(run_dir: str | Path, records: Sequence[Mapping], stage_a: str, stage_b: str,
                   keep: Callable[[Task], bool] = lambda task: True) -> Iterator[tuple[Task, Any, Mapping, list[dict], list[dict]]]:
    """Every (task, split) that stages A and B both evaluated on the same rows, for tasks ``keep`` accepts:
    ``(task, split, record of A, predictions of A, predictions of B)``. The one place that pairs two stages' rows
    (gains, average gains and flips all compare row by row, so they must agree on which rows pair)."""
    by_key = {(r["stage"], r["task"], r.get("split")): r for r in records}
    for (stage, task_name, split), a in by_key.items():
        b = by_key.get((stage_b, task_name, split))
        if stage != stage_a or b is None or not keep(task := get_task(task_name)):
            continue
        pa, pb = load_predictions(run_dir, a), load_predictions(run_dir, b)
        if [p["index"] for p in pa] == [p["index"] for p in pb]:
            yield task, split, a, pa, pb


def gains(run_dir: str | Path, records: Sequence[Mapping], pairs: Sequence[tuple[str, str]], **kwargs) -> list[dict]:
    """Paired gains (B - A) for each (stage A, stage B) pair on every task both evaluated on the same rows."""
    out = []
    for stage_a, stage_b in pairs:
        # ReCoRD and AX-g score per query / per pair: not resampled per row
        for task, split, a, pa, pb in paired_records(run_dir, records, stage_a, stage_b,
                                                     keep=lambda t: t.kind != "record" and t.name != "axg"):
            groups = [tuple(p["idx"][k] for k in task.group_by) for p in pa] if task.group_by else None
            result = paired_gain(task, [p["prediction"] for p in pa], [p["prediction"] for p in pb], [p["label"] for p in pa],
                                 groups=groups, **kwargs)
            out.append({"comparison": f"{stage_b} - {stage_a}", "task": a["task"], "split": split, **result})
    return out


def _paired_rows(run_dir: str | Path, records: Sequence[Mapping], stage_a: str, stage_b: str) -> dict[str, tuple]:
    """Per task: (task, predictions of A, predictions of B, references) on the first split both scored on the same rows."""
    found: dict[str, tuple] = {}
    for task, _, a, pa, pb in paired_records(run_dir, records, stage_a, stage_b,
                                             keep=lambda t: t.kind == "classification" and not t.group_by):
        if a["task"] not in found:
            found[a["task"]] = (task, [p["prediction"] for p in pa], [p["prediction"] for p in pb], [p["label"] for p in pa])
    return found


def average_gains(
    run_dir: str | Path,
    records: Sequence[Mapping],
    pairs: Sequence[tuple[str, str]],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    scale: float = 100.0,
) -> list[dict]:
    """The gain of stage B over stage A on the *average* over tasks, with a paired, stratified bootstrap CI.

    Each resample draws every task's rows with replacement (the same rows for A and B, each
    task on its own), recomputes each task's main metric and averages over the tasks both
    stages evaluated. So the interval holds the noise of every column at once, paired.
    """
    out = []
    for stage_a, stage_b in pairs:
        paired = _paired_rows(run_dir, records, stage_a, stage_b)
        if not paired:
            continue
        rng = np.random.default_rng(seed)

        def average(index_of: Mapping[str, Sequence[int]], which: int) -> float:
            """The mean over tasks of each task's main metric, on the rows ``index_of`` picks (A: 0, B: 1)."""
            scores = []
            for name, (task, predictions_a, predictions_b, refs) in paired.items():
                predictions, index = (predictions_a, predictions_b)[which], index_of[name]
                scores.append(metrics_lib.compute(task, [predictions[i] for i in index], [refs[i] for i in index])[task.main_metric])
            return float(np.mean(scores))

        everything = {name: range(len(rows[3])) for name, rows in paired.items()}
        gain = average(everything, 1) - average(everything, 0)
        samples = []
        for _ in range(n_resamples):
            index_of = {name: rng.integers(0, len(rows[3]), len(rows[3])).tolist() for name, rows in paired.items()}
            samples.append(average(index_of, 1) - average(index_of, 0))
        tail = (1 - level) / 2 * 100
        out.append({"comparison": f"{stage_b} - {stage_a}", "tasks": len(paired), "task_names": sorted(paired),
                    "gain": gain * scale, "low": float(np.percentile(samples, tail)) * scale,
                    "high": float(np.percentile(samples, 100 - tail)) * scale,
                    "above_zero": bool(np.percentile(samples, tail) > 0), "rows": sum(len(r[3]) for r in paired.values())})
    return out


# ----------------------------------------------------------------------------------------
# Rows one stage fixed and rows it broke, relative to another
# ----------------------------------------------------------------------------------------

def _word(task, label) -> str:
    return "unparseable" if label is None else task.answer_words[int(label)]


def _instances(task, record: Mapping, predictions: Sequence[Mapping]) -> list[str] | None:
    """The evaluated rows' instance text, reloaded the way the notebooks drew them (seeded sample of
    ``n`` rows); ``None`` when they cannot be loaded or are not the rows predicted (``idx`` differs)."""
    from nlu_helpers import data

    try:
        rows = data.load_split(task, record["split"], limit=record["n"], shuffle_seed=record.get("settings", {}).get("seed"))
    except Exception:  # noqa: BLE001 - no data at hand (e.g. a hub task offline): show the rows without their text
        return None
    if len(rows) != len(predictions) or any(row.get("idx") != p.get("idx") for row, p in zip(rows, predictions)):
        return None
    return [task.render(row) for row in rows]


def flips(
    run_dir: str | Path,
    records: Sequence[Mapping],
    before: str = "sft",
    after: str = "ppo",
    *,
    with_inputs: bool = True,
) -> list[dict]:
    """What changed row by row from stage ``before`` to stage ``after``, per task and split both
    evaluated on the same rows (classification tasks; an unparseable answer counts as wrong).

    Each entry: ``task``, ``split``, ``n``, the counts ``fixed`` (wrong before, right after),
    ``broken`` (right before, wrong after), ``both_right``, ``both_wrong``, and ``rows``: every
    changed row as ``{change, index, idx, gold, before, after, before_text, after_text, input}``
    (``input`` is the instance text when ``with_inputs`` and the rows can be reloaded).
    """
    out = []
    for task, split, a, pa, pb in paired_records(run_dir, records, before, after, keep=lambda t: t.kind == "classification"):
        inputs = _instances(task, a, pa) if with_inputs else None
        counts = {"fixed": 0, "broken": 0, "both_right": 0, "both_wrong": 0}
        changed = []
        for i, (x, y) in enumerate(zip(pa, pb)):
            right_before, right_after = x["prediction"] == x["label"], y["prediction"] == y["label"]
            kind = {(False, True): "fixed", (True, False): "broken", (True, True): "both_right", (False, False): "both_wrong"}[
                (right_before, right_after)]
            counts[kind] += 1
            if kind in ("fixed", "broken"):
                changed.append({
                    "change": kind, "index": x["index"], "idx": x.get("idx"), "gold": _word(task, x["label"]),
                    "before": _word(task, x["prediction"]), "after": _word(task, y["prediction"]),
                    "before_text": x.get("text"), "after_text": y.get("text"),
                    "input": inputs[i] if inputs is not None else None,
                })
        out.append({"task": a["task"], "split": split, "before": before, "after": after, "n": len(pa), **counts,
                    "rows": changed})
    return out


class FlipPager:
    """One changed row at a time, with Previous / Next and a fixed / broken filter (ipywidgets).

    ``display(pager)`` shows the widget in JupyterLab or Colab; where no widget can be drawn
    (papermill, nbconvert, a plain console) the same output carries a plain-text listing of
    the first rows instead, so a headless run still shows something readable.
    """

    CHANGES = ("all", "fixed", "broken")

    def __init__(self, rows: Sequence[Mapping], *, before: str = "sft", after: str = "ppo", plain_rows: int = 5):
        self.rows = list(rows)
        self.before, self.after = before, after
        self.plain_rows = plain_rows
        self.change = "all"
        self.position = 0
        self._widget = None

    def shown(self) -> list[Mapping]:
        """The rows the current filter lets through."""
        return [r for r in self.rows if self.change == "all" or r["change"] == self.change]

    def current(self) -> Mapping | None:
        rows = self.shown()
        return rows[self.position] if rows else None

    def move(self, by: int) -> None:
        """Step ``by`` rows (wrapping around) within the current filter."""
        n = len(self.shown())
        self.position = (self.position + by) % n if n else 0
        self._refresh()

    def filter(self, change: str) -> None:
        if change not in self.CHANGES:
            raise ValueError(f"change {change!r} is not known; allowed: {', '.join(self.CHANGES)}")
        self.change, self.position = change, 0
        self._refresh()

    def card_html(self) -> str:
        """The current row as HTML: what changed, the gold label, the input, both answers."""
        import html

        row = self.current()
        if row is None:
            return f"<i>no {'' if self.change == 'all' else self.change + ' '}rows</i>"
        colour = "#2e7d32" if row["change"] == "fixed" else "#c62828"
        where = f"{self.position + 1} of {len(self.shown())}; row {row['index']}, idx {row.get('idx')}"
        lines = [
            f'<b style="color:{colour}">{self.after} {row["change"]} this row</b> ({where})',
            f"<b>gold</b>: {html.escape(str(row['gold']))}",
        ]
        if row.get("input"):
            lines.append(f"<b>input</b>: {html.escape(row['input']).replace(chr(10), '<br>')}")
        for stage, key in ((self.before, "before"), (self.after, "after")):
            text = row.get(f"{key}_text")
            lines.append(f"<b>{stage}</b>: {html.escape(str(row[key]))}"
                         + (f" <code>{html.escape(repr(text))}</code>" if text is not None else ""))
        return '<div style="line-height:1.6">' + "<br>".join(lines) + "</div>"

    def plain_text(self) -> str:
        """The first rows as plain text: what a headless run shows."""
        fixed = sum(r["change"] == "fixed" for r in self.rows)
        lines = [(f"{len(self.rows)} changed rows ({fixed} fixed, {len(self.rows) - fixed} broken by {self.after}); "
                  f"the first {min(self.plain_rows, len(self.rows))} (page through all of them in JupyterLab):")]
        for row in self.rows[: self.plain_rows]:
            text = (row.get("input") or "").replace("\n", " | ")
            lines.append(f"- {row['change']:6} gold {row['gold']!s:12} {self.before} {row['before']!s:12} "
                         f"{self.after} {row['after']!s:12} {text[:100]}")
        return "\n".join(lines)

    def widget(self):
        """The ipywidgets panel (built once)."""
        if self._widget is None:
            import ipywidgets as widgets

            self._previous = widgets.Button(description="◀ Previous")
            self._next = widgets.Button(description="Next ▶")
            self._filter = widgets.ToggleButtons(options=self.CHANGES, value=self.change)
            self._card = widgets.HTML()
            self._previous.on_click(lambda _: self.move(-1))
            self._next.on_click(lambda _: self.move(+1))
            self._filter.observe(lambda change: self.filter(change["new"]), names="value")
            self._widget = widgets.VBox([widgets.HBox([self._filter, self._previous, self._next]), self._card])
            self._refresh()
        return self._widget

    def _refresh(self) -> None:
        if self._widget is not None:
            self._card.value = self.card_html()

    def _repr_mimebundle_(self, include=None, exclude=None):  # IPython's signature; both are unused
        bundle = {"text/plain": self.plain_text()}
        try:
            view = self.widget()._repr_mimebundle_()
        except ImportError:  # no ipywidgets: the plain listing is all there is
            return bundle
        if isinstance(view, tuple):
            view = view[0]
        view = dict(view or {})
        view["text/plain"] = bundle["text/plain"]
        return view
