"""The paper-style table and paired gains, from results files."""

import pytest

from nlu_helpers import report, results


def _record(stage, task, value, split="validation", mode="generate", metric="accuracy", **extra):
    return {"stage": stage, "task": task, "split": split, "mode": mode, "metrics": {metric: value}, **extra}


def test_table_uses_the_papers_columns_and_average():
    records = [_record("zero-shot", t, 0.5, metric=m) for t, m in
               [("sst2", "accuracy"), ("qnli", "accuracy"), ("rte", "accuracy"), ("cola", "mcc"), ("stsb", "spearman")]]
    records += [_record("zero-shot", "mnli", 0.4, split="validation_matched"),
                _record("zero-shot", "mnli", 0.3, split="validation_mismatched")]
    records += [{"stage": "zero-shot", "task": "qqp", "split": "validation", "mode": "generate", "metrics": {"f1": 0.6, "accuracy": 0.9}},
                {"stage": "zero-shot", "task": "mrpc", "split": "validation", "mode": "generate", "metrics": {"f1": 0.7, "accuracy": 0.1}}]
    table = report.paper_table(report.pick(records))
    row = table["zero-shot"]
    assert row["mnli-m"] == 40.0 and row["mnli-mm"] == 30.0 and row["qqp"] == 60.0 and row["mrpc"] == 70.0
    assert row["average"] == pytest.approx(round((50 * 5 + 40 + 30 + 60 + 70) / 9, 1))


def test_pick_keeps_one_reading_and_the_encoder():
    records = [_record("zero-shot", "sst2", 0.5), _record("zero-shot", "sst2", 0.7, mode="score"),
               _record("zero-shot", "sst2", 0.8, mode="score", calibrated=True), _record("encoder", "sst2", 0.9, mode="encoder"),
               {"stage": "prompt-design", "task": "sst2"}]
    assert [r["metrics"]["accuracy"] for r in report.pick(records)] == [0.5, 0.9]
    assert [r["metrics"]["accuracy"] for r in report.pick(records, mode="score")] == [0.7, 0.9]


def test_paired_gain_is_the_difference_with_an_interval():
    refs = [0, 1] * 50
    a = [0] * 100            # 50% right
    b = refs[:80] + a[80:]   # 90% right
    gain = report.paired_gain("sst2", a, b, refs, n_resamples=200)
    assert gain["gain"] == pytest.approx(0.4)
    assert gain["low"] <= 0.4 <= gain["high"] and gain["low"] > 0.2
    with pytest.raises(ValueError, match="same rows"):
        report.paired_gain("sst2", a, b[:5], refs)


def test_gains_read_predictions_beside_the_results(tmp_path):
    refs = [0, 1, 1, 0]
    for stage, preds in (("zero-shot", [1, 1, 0, 0]), ("sft", [0, 1, 1, 0])):
        acc = sum(p == r for p, r in zip(preds, refs)) / 4
        results.save_result(_record(stage, "movie-snippets", acc), tmp_path, f"{stage}-x",
                            [{"index": i, "label": r, "prediction": p} for i, (p, r) in enumerate(zip(preds, refs))])
    records = report.pick(results.load_results(tmp_path))
    [gain] = report.gains(tmp_path, records, [("zero-shot", "sft")], n_resamples=50)
    assert gain["comparison"] == "sft - zero-shot" and gain["gain"] == pytest.approx(0.5)
