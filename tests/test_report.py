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


def _predictions(stage, preds, refs, tmp_path, idx=None, texts=None, task="movie-snippets", split="validation"):
    acc = sum(p == r for p, r in zip(preds, refs)) / len(refs)
    rows = [{"index": i, "idx": (idx or list(range(len(refs))))[i], "label": r, "prediction": p,
             "text": None if texts is None else texts[i]} for i, (p, r) in enumerate(zip(preds, refs))]
    results.save_result(_record(stage, task, acc, split=split, n=len(refs), settings={"seed": 0}), tmp_path, f"{stage}-{task}", rows)


def test_flips_count_and_list_the_rows_one_stage_fixed_and_broke(tmp_path):
    from nlu_helpers import data

    truth = data.load_split("movie-snippets", "validation", limit=6, shuffle_seed=0)
    refs, idx = truth["label"], truth["idx"]
    sft = [refs[0], 1 - refs[1], None, refs[3], 1 - refs[4], refs[5]]   # rows 1, 2 (unparseable), 4 wrong
    ppo = [refs[0], refs[1], refs[2], 1 - refs[3], 1 - refs[4], refs[5]]  # fixes 1 and 2, breaks 3
    _predictions("sft", sft, refs, tmp_path, idx=idx, texts=[f" answer {i}" for i in range(6)])
    _predictions("ppo", ppo, refs, tmp_path, idx=idx)
    [flip] = report.flips(tmp_path, report.pick(results.load_results(tmp_path)), "sft", "ppo")
    assert {k: flip[k] for k in ("task", "before", "after", "n", "fixed", "broken", "both_right", "both_wrong")} == {
        "task": "movie-snippets", "before": "sft", "after": "ppo", "n": 6, "fixed": 2, "broken": 1, "both_right": 2, "both_wrong": 1}
    assert [(r["change"], r["index"]) for r in flip["rows"]] == [("fixed", 1), ("fixed", 2), ("broken", 3)]
    words = ("Negative", "Positive")
    fixed = flip["rows"][1]
    assert fixed["before"] == "unparseable" and fixed["after"] == fixed["gold"] == words[refs[2]]
    assert fixed["before_text"] == " answer 2" and fixed["after_text"] is None
    assert fixed["input"] == f"Sentence: {truth[2]['sentence']}"  # the row's text, reloaded and checked by idx


def test_flips_skip_other_rows_and_leave_out_inputs_they_cannot_match(tmp_path):
    _predictions("sft", [0, 1, 1], [0, 1, 0], tmp_path, idx=[-1, -2, -3])  # no validation row has these idx
    _predictions("ppo", [0, 1, 0], [0, 1, 0], tmp_path, idx=[-1, -2, -3])
    _predictions("zero-shot", [1, 1], [0, 1], tmp_path)  # other rows than ppo's: not compared
    records = report.pick(results.load_results(tmp_path))
    [flip] = report.flips(tmp_path, records, "sft", "ppo")
    assert flip["fixed"] == 1 and flip["rows"][0]["input"] is None
    assert report.flips(tmp_path, records, "zero-shot", "ppo") == []
    assert report.flips(tmp_path, records, "few-shot", "ppo") == []


def test_the_flip_pager_pages_filters_and_reads_as_plain_text_without_a_widget_frontend():
    rows = [{"change": change, "index": i, "idx": i, "gold": "Positive", "before": "Negative", "after": "Positive",
             "before_text": None, "after_text": " Positive </Judgement>", "input": f"Sentence: row {i}"}
            for i, change in enumerate(["fixed", "broken", "fixed"])]
    pager = report.FlipPager(rows, plain_rows=2)
    widget = pager.widget()
    assert "row 0" in pager._card.value and "1 of 3" in pager._card.value
    pager._next.click()
    assert "row 1" in pager._card.value and "broken" in pager._card.value
    pager._previous.click()
    pager._previous.click()  # wraps around
    assert "row 2" in pager._card.value
    pager._filter.value = "fixed"
    assert [r["index"] for r in pager.shown()] == [0, 2] and "1 of 2" in pager._card.value
    pager._filter.value = "broken"
    pager.move(+1)
    assert "row 1" in pager._card.value and "1 of 1" in pager._card.value
    with pytest.raises(ValueError, match="change 'all-of-them' is not known; allowed: all, fixed, broken"):
        pager.filter("all-of-them")
    bundle = pager._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and widget is pager.widget()
    assert bundle["text/plain"].splitlines()[0].startswith("3 changed rows (2 fixed, 1 broken by ppo)")
    assert len(bundle["text/plain"].splitlines()) == 3 and "Sentence: row 1" in bundle["text/plain"]
    empty = report.FlipPager([])
    assert "no rows" in empty.card_html()
    empty.filter("fixed")
    assert "no fixed rows" in empty.card_html() and empty.plain_text().startswith("0 changed rows")
