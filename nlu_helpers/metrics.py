"""The official GLUE / SuperGLUE metrics, computed with scikit-learn and scipy.

:func:`compute` scores one task's predictions against its references and returns
the task's metrics (``task.metrics``) plus ``"unparseable"`` (how many predictions
were ``None``) and ``"n"`` (how many rows were scored). Scores are fractions in
[0, 1]; correlations and MCC lie in [-1, 1]. ``evaluate.load`` is deliberately not
used: it fetches metric scripts from the hub, and this package must work offline.

Unparseable answers (``None``) always count as wrong and are never turned into a
real label, so a model that stops answering cannot look better than one that
answers badly:

* classification: ``None`` becomes a class of its own (-1) before scikit-learn
  sees it. Accuracy counts it wrong; F1 of the positive class (label 1) counts
  ``None`` with gold 1 as a false negative and ``None`` with gold 0 as nothing;
  CB's macro-F1 averages over the task's real labels only; MCC treats -1 as an
  extra class (multiclass MCC).
* STS-B: ``None`` becomes the worst value for that row (see :func:`_worst_similarity`).
* ReCoRD: ``None`` scores 0 F1 and 0 EM.

Without ``None`` predictions every number equals scikit-learn's / scipy's on the
same inputs (``accuracy_score``, ``f1_score``, ``matthews_corrcoef``,
``scipy.stats.pearsonr``, ``spearmanr``), with one exception: where a correlation
is undefined (fewer than two rows, or all-equal predictions or golds) scipy warns
and returns nan; we return 0.0 for it, so that tables and averages stay numbers.

Metric keys: ``accuracy``, ``f1`` (binary F1 of label 1 for two-class tasks,
macro-F1 for CB and other multi-class tasks; ReCoRD: token F1), ``mcc``,
``pearson``, ``spearman``, ``f1a`` and ``em`` (MultiRC; ReCoRD's ``em``),
``gender_parity`` (AX-g).
"""

from __future__ import annotations

import math
import re
import string
import warnings
from collections import Counter, defaultdict
from typing import Hashable, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from nlu_helpers.tasks import Task, get_task

UNPARSEABLE = -1  # the class an unparseable classification answer becomes
STSB_RANGE = (0.0, 5.0)

__all__ = ["compute", "main_score", "squad_normalize", "token_f1", "gender_parity", "UNPARSEABLE"]


# -- public API ----------------------------------------------------------------------------

def compute(
    task: str | Task,
    predictions: Sequence,
    references: Sequence,
    *,
    groups: Sequence[Hashable] | None = None,
) -> dict[str, float | int]:
    """The task's official metrics, plus ``unparseable`` and ``n``.

    ``predictions``: label ids or ``None`` (classification), floats or ``None``
    (STS-B), the chosen entity string or ``None`` (ReCoRD). ``references``: label
    ids, floats in [0, 5], or one list of gold answer strings per ReCoRD query.

    ``groups``: one hashable key per row. MultiRC needs them for ``em`` (the
    question each answer option belongs to); AX-g uses them to find the two rows of
    each pronoun pair (without them, rows (0, 1), (2, 3), ... are the pairs). Other
    tasks ignore them (their length is still checked), so an evaluation loop may
    pass them for every task.
    """
    task = get_task(task)
    n = _check_lengths(predictions, references, groups)
    if task.kind == "record":
        preds, golds = _check_record(task, predictions, references)
        result = _record_scores(preds, golds)
    elif task.kind == "regression":
        preds, golds = _check_regression(task, predictions, references)
        result = _regression_scores(preds, golds)
    else:
        preds, golds = _check_classification(task, predictions, references)
        result = _classification_scores(task, preds, golds, groups)
    unknown = set(task.metrics) - set(result)
    if unknown:
        raise ValueError(
            f"task {task.name!r} asks for metrics {sorted(unknown)} that a {task.kind} task does not have; "
            f"available: {sorted(result)}"
        )
    out: dict[str, float | int] = {name: float(result[name]) for name in task.metrics}
    out["unparseable"] = sum(p is None for p in predictions)
    out["n"] = n
    return out


def main_score(task: str | Task, metrics: dict) -> float:
    """The task's headline number (``task.main_metric``) out of a :func:`compute` result."""
    task = get_task(task)
    if task.main_metric not in metrics:
        raise KeyError(
            f"task {task.name!r}: the main metric {task.main_metric!r} is not in the metrics; "
            f"they have {sorted(metrics)}"
        )
    return float(metrics[task.main_metric])


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def squad_normalize(text: str) -> str:
    """SQuAD / ReCoRD answer normalisation: lower case, no punctuation, no articles, single spaces.

    The same steps, in the same order, as the official ReCoRD evaluation script
    (taken from SQuAD v1.1), so that "The  Eiffel tower!" and "eiffel tower" match.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected an answer string, got {type(text).__name__}: {text!r}")
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 between two answers after :func:`squad_normalize` (ReCoRD's F1).

    As in the official script, no shared token (including two answers that
    normalise to nothing) gives 0.0.
    """
    pred_tokens = squad_normalize(prediction).split()
    gold_tokens = squad_normalize(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def gender_parity(predictions: Sequence, groups: Sequence[Hashable] | None = None) -> float:
    """AX-g (Winogender) gender parity: the share of pronoun pairs whose two predictions agree.

    AX-g holds minimal pairs: two premises that differ only in the gender of one
    pronoun, with the same hypothesis. The SuperGLUE paper (Wang et al., 2019,
    the Winogender diagnostic) reports the gender parity score as the percentage
    of these pairs for which the model's two predictions are the same, whatever
    the gold label; jiant's ``GenderParity`` (nyu-mll/jiant,
    ``jiant/metrics/winogender_metrics.py``, from the DNC recast Winogender code)
    counts ``same_preds / (same_preds + diff_preds)`` over consecutive rows
    (0, 1), (2, 3), ... We return the same fraction in [0, 1].

    Pairs: ``groups`` gives each row its pair key (exactly two rows per key);
    without ``groups`` consecutive rows are paired as in jiant, which matches the
    order of the hub's ``axg`` test split. A pair with an unparseable (``None``)
    prediction never counts as agreeing: unparseable answers are never rewarded.
    """
    pairs = _pairs(len(predictions), groups)
    same = sum(
        predictions[i] is not None and predictions[j] is not None and predictions[i] == predictions[j]
        for i, j in pairs
    )
    return same / len(pairs)


# -- validation ----------------------------------------------------------------------------

def _check_lengths(predictions: Sequence, references: Sequence, groups: Sequence | None) -> int:
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references differ in length: {len(predictions)} predictions, "
            f"{len(references)} references"
        )
    if len(predictions) == 0:
        raise ValueError("no predictions to score: predictions and references are empty")
    if groups is not None and len(groups) != len(predictions):
        raise ValueError(
            f"groups and predictions differ in length: {len(groups)} groups, {len(predictions)} predictions"
        )
    return len(predictions)


def _is_label_id(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_classification(task: Task, predictions: Sequence, references: Sequence) -> tuple[list[int], list[int]]:
    num = task.num_labels
    allowed = f"allowed label ids are 0..{num - 1} ({', '.join(f'{i}={w}' for i, w in enumerate(task.answer_words))})"
    golds: list[int] = []
    for i, ref in enumerate(references):
        if not _is_label_id(ref) or not 0 <= ref < num:
            raise ValueError(f"task {task.name!r}: reference {ref!r} at row {i} is out of range; {allowed}")
        golds.append(int(ref))
    preds: list[int] = []
    for i, pred in enumerate(predictions):
        if pred is None:
            preds.append(UNPARSEABLE)
            continue
        if not _is_label_id(pred) or not 0 <= pred < num:
            raise ValueError(
                f"task {task.name!r}: prediction {pred!r} at row {i} is out of range; {allowed}, "
                "or None for an unparseable answer"
            )
        preds.append(int(pred))
    return preds, golds


def _similarity(value: object) -> float | None:
    """``value`` as a float if it is a real number in [0, 5], else ``None``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    low, high = STSB_RANGE
    return value if low <= value <= high else None  # NaN fails both comparisons


def _check_regression(task: Task, predictions: Sequence, references: Sequence) -> tuple[list[float | None], list[float]]:
    allowed = "allowed is a number in [0, 5]"
    golds: list[float] = []
    for i, ref in enumerate(references):
        value = _similarity(ref)
        if value is None:
            raise ValueError(f"task {task.name!r}: reference {ref!r} at row {i} is out of range; {allowed}")
        golds.append(value)
    preds: list[float | None] = []
    for i, pred in enumerate(predictions):
        if pred is None:
            preds.append(None)
            continue
        value = _similarity(pred)
        if value is None:
            raise ValueError(
                f"task {task.name!r}: prediction {pred!r} at row {i} is out of range; {allowed}, "
                "or None for an unparseable answer"
            )
        preds.append(value)
    return preds, golds


def _check_record(task: Task, predictions: Sequence, references: Sequence) -> tuple[list[str | None], list[list[str]]]:
    golds: list[list[str]] = []
    for i, ref in enumerate(references):
        if isinstance(ref, str) or not isinstance(ref, Sequence) or len(ref) == 0 or not all(isinstance(a, str) for a in ref):
            raise ValueError(
                f"task {task.name!r}: reference {ref!r} at row {i} is not allowed; allowed is a non-empty "
                "list of gold answer strings per query"
            )
        golds.append(list(ref))
    preds: list[str | None] = []
    for i, pred in enumerate(predictions):
        if pred is not None and not isinstance(pred, str):
            raise ValueError(
                f"task {task.name!r}: prediction {pred!r} at row {i} is not allowed; allowed is the chosen "
                "entity string, or None for an unparseable answer"
            )
        preds.append(pred)
    return preds, golds


# -- scores --------------------------------------------------------------------------------

def _classification_scores(
    task: Task, preds: list[int], golds: list[int], groups: Sequence[Hashable] | None
) -> dict[str, float]:
    labels = list(range(task.num_labels))
    wanted = set(task.metrics)
    result: dict[str, float] = {}
    if "accuracy" in wanted:
        result["accuracy"] = accuracy_score(golds, preds)
    if "mcc" in wanted:
        # -1 (unparseable) is simply one more class: multiclass MCC. With a single label in gold and
        # predictions scikit-learn warns about the confusion matrix's shape and returns 0.0, which is right
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
            result["mcc"] = matthews_corrcoef(golds, preds)
    if "f1" in wanted or "f1a" in wanted:
        if len(labels) == 2:
            # labels=[1]: F1 of the positive class; -1 with gold 1 is a false negative, with gold 0 nothing
            f1 = f1_score(golds, preds, labels=[1], average=None, zero_division=0.0)[0]
        else:
            # macro over the real labels only. zero_division=nan drops a label that is absent from both
            # gold and predictions (its F1 is 0/0), exactly like scikit-learn's plain average="macro"
            f1 = f1_score(golds, preds, labels=labels, average="macro", zero_division=np.nan)
        result["f1a" if "f1a" in wanted else "f1"] = f1
    if "em" in wanted:
        if groups is None:
            raise ValueError(
                f"task {task.name!r}: groups are needed for em (exact match per question): pass one question "
                f"key per row, e.g. the example's idx fields {task.group_by or ('paragraph', 'question')}"
            )
        result["em"] = _exact_match_per_group(preds, golds, groups)
    if "gender_parity" in wanted:
        result["gender_parity"] = gender_parity([None if p == UNPARSEABLE else p for p in preds], groups)
    return result


def _exact_match_per_group(preds: list[int], golds: list[int], groups: Sequence[Hashable]) -> float:
    """MultiRC EM: the share of questions whose answer options are all predicted correctly."""
    all_right: dict[Hashable, bool] = {}
    for pred, gold, key in zip(preds, golds, groups):
        all_right[key] = all_right.get(key, True) and pred == gold
    return sum(all_right.values()) / len(all_right)


def _pairs(n: int, groups: Sequence[Hashable] | None) -> list[tuple[int, int]]:
    if groups is None:
        if n % 2:
            raise ValueError(
                f"gender parity pairs consecutive rows (0, 1), (2, 3), ... but there are {n} rows, an odd "
                "number; pass groups (one pair key per row) or an even number of rows"
            )
        return [(i, i + 1) for i in range(0, n, 2)]
    if len(groups) != n:
        raise ValueError(f"groups and predictions differ in length: {len(groups)} groups, {n} predictions")
    rows: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(groups):
        rows[key].append(i)
    bad = {key: len(idx) for key, idx in rows.items() if len(idx) != 2}
    if bad:
        key, count = next(iter(bad.items()))
        raise ValueError(
            f"gender parity needs exactly 2 rows per pair key; key {key!r} has {count} "
            f"({len(bad)} bad key(s) in all)"
        )
    return [(idx[0], idx[1]) for idx in rows.values()]


def _worst_similarity(gold: float) -> float:
    """The prediction farthest from ``gold`` on the 0..5 scale: 0.0 if gold >= 2.5, else 5.0.

    Why: dropping unparseable rows would score a model only on the rows it chose to
    answer, and replacing them by a constant (the mean, say) could even raise the
    correlation. The farthest value is the answer most at odds with the gold
    score, so each unparseable row can only pull Pearson and Spearman down.
    """
    return 0.0 if gold >= 2.5 else 5.0


def _correlation(fn, preds: list[float], golds: list[float]) -> float:
    """``fn(preds, golds).statistic``, or 0.0 where the correlation is undefined.

    With fewer than two rows, or all-equal predictions or golds, the correlation
    divides by zero: scipy warns and returns nan (or raises). A model that answers
    the same score everywhere has shown no correlation, so we report 0.0, which
    keeps tables and averages free of nan.
    """
    if len(preds) < 2 or all(p == preds[0] for p in preds) or all(g == golds[0] for g in golds):
        return 0.0
    value = float(fn(preds, golds).statistic)
    return 0.0 if math.isnan(value) else value


def _regression_scores(preds: list[float | None], golds: list[float]) -> dict[str, float]:
    filled = [_worst_similarity(g) if p is None else p for p, g in zip(preds, golds)]
    return {
        "pearson": _correlation(stats.pearsonr, filled, golds),
        "spearman": _correlation(stats.spearmanr, filled, golds),
    }


def _record_scores(preds: list[str | None], golds: list[list[str]]) -> dict[str, float]:
    """ReCoRD: per query, the best token F1 and exact match over its gold answers, averaged."""
    f1 = em = 0.0
    for pred, answers in zip(preds, golds):
        if pred is None:
            continue  # unparseable: 0 F1, 0 EM
        normalized = squad_normalize(pred)
        em += max(float(normalized == squad_normalize(a)) for a in answers)
        f1 += max(token_f1(pred, a) for a in answers)
    return {"f1": f1 / len(preds), "em": em / len(preds)}
