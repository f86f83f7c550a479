"""Metrics: equal to scikit-learn / scipy, unparseable answers count as wrong, clear errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from nlu_helpers import metrics
from nlu_helpers.metrics import compute, gender_parity, main_score, squad_normalize, token_f1
from nlu_helpers.tasks import TASKS, get_task

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _pairs(num_labels: int, min_size: int = 1, max_size: int = 30):
    """(predictions, references) of equal length with label ids in 0..num_labels-1."""
    label = st.integers(0, num_labels - 1)
    return st.integers(min_size, max_size).flatmap(
        lambda n: st.tuples(st.lists(label, min_size=n, max_size=n), st.lists(label, min_size=n, max_size=n))
    )


# -- equality with scikit-learn / scipy on fixed inputs ----------------------------------------

PRED2 = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1]
GOLD2 = [1, 0, 0, 1, 0, 1, 1, 0, 0, 1]
PRED3 = [0, 1, 2, 2, 1, 0, 0, 2, 1, 1]
GOLD3 = [0, 1, 2, 1, 1, 0, 2, 2, 0, 1]


def test_accuracy_equals_sklearn_fixed():
    assert compute("sst2", PRED2, GOLD2)["accuracy"] == accuracy_score(GOLD2, PRED2)
    assert compute("mnli", PRED3, GOLD3)["accuracy"] == accuracy_score(GOLD3, PRED3)


def test_binary_f1_equals_sklearn_fixed():
    result = compute("mrpc", PRED2, GOLD2)
    assert result["f1"] == f1_score(GOLD2, PRED2)
    assert result["accuracy"] == accuracy_score(GOLD2, PRED2)
    assert compute("multirc", PRED2, GOLD2, groups=range(10))["f1a"] == f1_score(GOLD2, PRED2)


def test_macro_f1_cb_equals_sklearn_fixed():
    result = compute("cb", PRED3, GOLD3)
    assert result["f1"] == f1_score(GOLD3, PRED3, average="macro")
    assert result["f1"] == f1_score(GOLD3, PRED3, labels=[0, 1, 2], average="macro")


def test_mcc_equals_sklearn_fixed():
    assert compute("cola", PRED2, GOLD2)["mcc"] == matthews_corrcoef(GOLD2, PRED2)
    assert compute("ax", PRED3, GOLD3)["mcc"] == matthews_corrcoef(GOLD3, PRED3)
    assert compute("axb", PRED2, GOLD2)["mcc"] == matthews_corrcoef(GOLD2, PRED2)


def test_correlations_equal_scipy_fixed():
    pred = [0.5, 4.0, 3.2, 1.0, 2.5, 4.8, 0.0]
    gold = [1.0, 3.8, 3.0, 0.4, 2.0, 5.0, 1.0]
    result = compute("stsb", pred, gold)
    assert result["pearson"] == float(stats.pearsonr(pred, gold).statistic)
    assert result["spearman"] == float(stats.spearmanr(pred, gold).statistic)


def test_scores_are_plain_python_numbers():
    result = compute("cola", PRED2, GOLD2)
    assert all(type(result[k]) is float for k in ("mcc", "accuracy"))
    assert type(result["n"]) is int and type(result["unparseable"]) is int
    result = compute("stsb", [1.0, 2.0, 3.0], [1.0, 2.5, 2.0])
    assert all(type(result[k]) is float for k in ("pearson", "spearman"))


def test_numpy_label_ids_are_accepted():
    result = compute("sst2", np.array(PRED2), np.array(GOLD2))
    assert result["accuracy"] == accuracy_score(GOLD2, PRED2)


# -- equality on hypothesis-generated inputs (no None) -----------------------------------------

@FAST
@given(_pairs(2))
def test_binary_metrics_equal_sklearn(data):
    pred, gold = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns where F1 is 0/0 or one label; we match its value
        expected_f1 = f1_score(gold, pred)
        expected_mcc = matthews_corrcoef(gold, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # compute itself stays quiet
        mrpc = compute("mrpc", pred, gold)
        cola = compute("cola", pred, gold)
    assert mrpc["f1"] == expected_f1
    assert mrpc["accuracy"] == accuracy_score(gold, pred)
    assert cola["mcc"] == expected_mcc
    assert compute("multirc", pred, gold, groups=[0] * len(pred))["f1a"] == expected_f1
    assert mrpc["unparseable"] == 0 and mrpc["n"] == len(pred)


@FAST
@given(_pairs(3))
def test_three_class_metrics_equal_sklearn(data):
    pred, gold = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_f1 = f1_score(gold, pred, average="macro")
        expected_mcc = matthews_corrcoef(gold, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cb = compute("cb", pred, gold)
        ax = compute("ax", pred, gold)
    assert cb["accuracy"] == accuracy_score(gold, pred)
    assert cb["f1"] == expected_f1
    assert ax["mcc"] == expected_mcc


@FAST
@given(st.integers(3, 25).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0.0, 5.0), min_size=n, max_size=n),
    st.lists(st.floats(0.0, 5.0), min_size=n, max_size=n),
)))
def test_correlations_equal_scipy(data):
    pred, gold = data
    result = compute("stsb", pred, gold)
    if len(set(pred)) > 1 and len(set(gold)) > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy may warn on nearly constant input
            pearson = float(stats.pearsonr(pred, gold).statistic)
            spearman = float(stats.spearmanr(pred, gold).statistic)
        assert result["pearson"] == (0.0 if math.isnan(pearson) else pearson)
        assert result["spearman"] == (0.0 if math.isnan(spearman) else spearman)
    else:
        assert result["pearson"] == 0.0 and result["spearman"] == 0.0
    assert -1.0 <= result["pearson"] <= 1.0 and -1.0 <= result["spearman"] <= 1.0


# -- unparseable answers count as wrong --------------------------------------------------------

def test_unparseable_counts_as_wrong_for_accuracy():
    result = compute("sst2", [None, 1], [1, 1])
    assert result == {"accuracy": 0.5, "unparseable": 1, "n": 2}


def test_unparseable_is_never_a_real_label():
    # if None became label 0 it would be right here; it must stay wrong
    assert compute("sst2", [None, None], [0, 0])["accuracy"] == 0.0
    assert compute("mnli", [None, 1, 2], [0, 1, 2])["accuracy"] == pytest.approx(2 / 3)


def test_unparseable_in_binary_f1():
    # gold 1 + None: a false negative. tp=1, fn=1, fp=0 -> F1 = 2/3
    assert compute("mrpc", [None, 1, 0], [1, 1, 0])["f1"] == pytest.approx(2 / 3)
    # gold 0 + None: neither TP nor FP, so F1 of the positive class is untouched
    assert compute("qqp", [None, 1, 0], [0, 1, 0])["f1"] == 1.0
    assert compute("qqp", [None, 1, 0], [0, 1, 0])["accuracy"] == pytest.approx(2 / 3)
    # the same as scikit-learn with labels=[1] on -1
    assert compute("mrpc", [None, 1, 0, None], [1, 1, 0, 0])["f1"] == f1_score([1, 1, 0, 0], [-1, 1, 0, -1], labels=[1], average="micro")


def test_unparseable_in_macro_f1_uses_real_labels_only():
    pred, gold = [None, 1, 2, 0], [0, 1, 2, 0]
    expected = f1_score(gold, [-1, 1, 2, 0], labels=[0, 1, 2], average="macro")
    assert compute("cb", pred, gold)["f1"] == expected
    assert compute("cb", pred, gold)["f1"] == pytest.approx((2 / 3 + 1 + 1) / 3)


def test_unparseable_in_mcc_is_an_extra_class():
    pred, gold = [None, 1, 0, 1, None, 0], [1, 1, 0, 1, 0, 0]
    assert compute("cola", pred, gold)["mcc"] == matthews_corrcoef(gold, [-1, 1, 0, 1, -1, 0])
    # an all-unparseable model gets no credit
    assert compute("cola", [None] * 4, [0, 1, 0, 1])["mcc"] == 0.0


def test_stsb_unparseable_takes_the_worst_value():
    pred, gold = [None, None, 1.0, 4.0, 2.0], [4.0, 1.0, 1.5, 3.5, 2.5]
    filled = [0.0, 5.0, 1.0, 4.0, 2.0]  # gold >= 2.5 -> 0.0, gold < 2.5 -> 5.0
    result = compute("stsb", pred, gold)
    assert result["pearson"] == float(stats.pearsonr(filled, gold).statistic)
    assert result["spearman"] == float(stats.spearmanr(filled, gold).statistic)
    assert result["unparseable"] == 2
    # the boundary: gold exactly 2.5 counts as "similar", so the worst answer is 0.0
    assert metrics._worst_similarity(2.5) == 0.0 and metrics._worst_similarity(2.4) == 5.0
    # unparseable rows only lower the score compared with a perfect answer
    assert result["pearson"] < compute("stsb", gold, gold)["pearson"]


def test_constant_predictions_give_zero_correlation_not_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and without scipy's ConstantInputWarning
        result = compute("stsb", [3.0, 3.0, 3.0], [1.0, 2.0, 4.0])
        assert result["pearson"] == 0.0 and result["spearman"] == 0.0
        assert compute("stsb", [1.0, 2.0, 3.0], [2.0, 2.0, 2.0])["pearson"] == 0.0
        assert compute("stsb", [1.0], [2.0]) == {"pearson": 0.0, "spearman": 0.0, "unparseable": 0, "n": 1}


@FAST
@given(_pairs(2), st.data())
def test_unparseable_is_minus_one_for_sklearn(data, draw):
    pred, gold = data
    holes = draw.draw(st.lists(st.booleans(), min_size=len(pred), max_size=len(pred)))
    with_none = [None if hole else p for p, hole in zip(pred, holes)]
    as_minus_one = [-1 if p is None else p for p in with_none]
    result = compute("mrpc", with_none, gold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert result["f1"] == f1_score(gold, as_minus_one, labels=[1], average="micro")
        assert compute("cola", with_none, gold)["mcc"] == matthews_corrcoef(gold, as_minus_one)
    assert result["accuracy"] == accuracy_score(gold, as_minus_one)
    assert result["unparseable"] == sum(holes)
    # an unparseable answer is never better than the right one
    assert result["accuracy"] <= compute("mrpc", [g if p is None else p for p, g in zip(with_none, gold)], gold)["accuracy"]


# -- MultiRC, ReCoRD, AX-g ---------------------------------------------------------------------

def test_multirc_em_by_question():
    # question a: both options right; b: one of two wrong; c: None is wrong; d: right
    groups = ["a", "a", "b", "b", "c", "c", "d"]
    pred = [1, 0, 1, 1, None, 1, 0]
    gold = [1, 0, 1, 0, 0, 1, 0]
    result = compute("multirc", pred, gold, groups=groups)
    assert result["em"] == 0.5  # a and d out of four questions
    # F1a over all options: tp=3 (rows 0, 2, 5), fp=1 (row 3), fn=0 -> 6/7
    assert result["f1a"] == pytest.approx(6 / 7)
    assert result["unparseable"] == 1 and result["n"] == 7


def test_multirc_groups_may_be_tuples_and_interleaved():
    groups = [(0, 0), (0, 1), (0, 0), (0, 1)]
    assert compute("multirc", [1, 1, 0, 0], [1, 1, 0, 1], groups=groups)["em"] == 0.5


def test_multirc_without_groups_is_an_error():
    with pytest.raises(ValueError, match="groups are needed for em"):
        compute("multirc", [1, 0], [1, 0])


def test_squad_normalize_and_token_f1():
    assert squad_normalize("The  Eiffel tower!") == "eiffel tower"
    assert squad_normalize("An apple, a pear.") == "apple pear"
    assert token_f1("The  Eiffel tower!", "eiffel tower") == 1.0
    # "eiffel" vs "eiffel tower": precision 1, recall 1/2 -> 2/3
    assert token_f1("Eiffel", "the Eiffel Tower") == pytest.approx(2 / 3)
    assert token_f1("Paris", "London") == 0.0
    assert token_f1("the", "a") == 0.0  # both normalise to nothing


def test_record_em_and_f1_by_hand():
    predictions = ["The  Eiffel tower!", "Eiffel", None, "London"]
    references = [["eiffel tower"], ["the Eiffel Tower", "Eiffel Tower Paris"], ["Paris"], ["Paris", "London, UK"]]
    result = compute("record", predictions, references)
    # EM: 1, 0, 0 (None), 0 ("london" != "london uk")
    assert result["em"] == 0.25
    # F1: 1, max(2/3, 1/2), 0, max(0, 2/3)
    assert result["f1"] == pytest.approx((1 + 2 / 3 + 0 + 2 / 3) / 4)
    assert result["unparseable"] == 1 and result["n"] == 4
    assert set(result) == {"f1", "em", "unparseable", "n"}


def test_axg_gender_parity_by_hand():
    # pairs (0,1) agree, (2,3) disagree, (4,5) agree but both wrong, (6,7) has a None
    pred = [0, 0, 0, 1, 1, 1, None, 0]
    gold = [0, 0, 0, 0, 0, 0, 0, 0]
    result = compute("axg", pred, gold)
    assert result["gender_parity"] == 0.5  # 2 of 4 pairs
    assert result["accuracy"] == 0.5  # rows 0, 1, 2 and 7
    assert result["unparseable"] == 1
    # explicit pair keys give the same answer in any row order
    order = [3, 0, 5, 7, 1, 2, 6, 4]
    keys = ["p0", "p0", "p1", "p1", "p2", "p2", "p3", "p3"]
    shuffled = compute("axg", [pred[i] for i in order], [gold[i] for i in order], groups=[keys[i] for i in order])
    assert shuffled["gender_parity"] == 0.5
    assert gender_parity([1, 1, 0, 0]) == 1.0


def test_axg_odd_rows_without_groups_is_an_error():
    with pytest.raises(ValueError, match=r"3 rows, an odd number"):
        compute("axg", [0, 1, 0], [0, 1, 0])


def test_axg_groups_need_exactly_two_rows_per_pair():
    with pytest.raises(ValueError, match=r"key 'x' has 3"):
        compute("axg", [0, 1, 0, 1], [0, 1, 0, 1], groups=["x", "x", "x", "y"])


# -- validation errors name the bad value ------------------------------------------------------

def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"3 predictions, 2 references"):
        compute("sst2", [0, 1, 0], [0, 1])
    with pytest.raises(ValueError, match=r"1 groups, 2 predictions"):
        compute("multirc", [0, 1], [0, 1], groups=[0])


def test_empty_input_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        compute("sst2", [], [])


@pytest.mark.parametrize("bad", [2, -1, True, 1.0, "1"])
def test_reference_out_of_range_names_value_and_allowed_ids(bad):
    with pytest.raises(ValueError, match=rf"reference {bad!r} at row 1 is out of range; allowed label ids are 0\.\.1"):
        compute("sst2", [0, 1], [0, bad])


def test_prediction_out_of_range_is_an_error():
    with pytest.raises(ValueError, match=r"prediction 3 at row 0 is out of range; allowed label ids are 0\.\.2"):
        compute("mnli", [3, 1], [0, 1])
    with pytest.raises(ValueError, match=r"prediction -1 at row 1"):
        compute("cb", [0, -1], [0, 1])


def test_stsb_values_out_of_range_are_errors():
    with pytest.raises(ValueError, match=r"reference 5\.5 at row 0 is out of range; allowed is a number in \[0, 5\]"):
        compute("stsb", [1.0, 2.0], [5.5, 2.0])
    with pytest.raises(ValueError, match=r"prediction -0\.5 at row 1"):
        compute("stsb", [1.0, -0.5], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"prediction nan"):
        compute("stsb", [float("nan"), 1.0], [1.0, 2.0])


def test_record_inputs_are_checked():
    with pytest.raises(ValueError, match=r"reference \[\] at row 0 is not allowed; allowed is a non-empty list"):
        compute("record", ["Paris"], [[]])
    with pytest.raises(ValueError, match=r"reference 'Paris' at row 0"):
        compute("record", ["Paris"], ["Paris"])
    with pytest.raises(ValueError, match=r"prediction 1 at row 0 is not allowed"):
        compute("record", [1], [["Paris"]])


def test_unknown_task_is_an_error():
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        compute("nope", [0], [0])


# -- main_score --------------------------------------------------------------------------------

def test_main_score_picks_the_main_metric():
    result = compute("cb", PRED3, GOLD3)
    assert main_score("cb", result) == result["f1"]
    assert main_score(get_task("cola"), compute("cola", PRED2, GOLD2)) == matthews_corrcoef(GOLD2, PRED2)
    with pytest.raises(KeyError, match="main metric 'mcc'"):
        main_score("cola", {"accuracy": 1.0})


# -- every task --------------------------------------------------------------------------------

def _small_valid_input(name: str):
    task = get_task(name)
    if task.kind == "record":
        return ["Afghanistan", None], [["Afghanistan"], ["Mariam", "Mariam's"]], None
    if task.kind == "regression":
        return [4.5, None, 1.0, 2.0], [5.0, 3.0, 0.5, 2.5], None
    k = task.num_labels
    gold = [i % k for i in range(6)]
    pred = [None] + gold[1:5] + [(gold[5] + 1) % k]
    groups = [0, 0, 1, 1, 2, 2] if (task.group_by or "gender_parity" in task.metrics) else None
    return pred, gold, groups


def test_all_twenty_one_tasks_are_covered():
    assert len(TASKS) >= 21 and "movie-snippets" in TASKS


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_returns_exactly_its_metrics(name):
    task = get_task(name)
    pred, gold, groups = _small_valid_input(name)
    result = compute(task, pred, gold, groups=groups)
    assert set(result) == set(task.metrics) | {"unparseable", "n"}
    assert list(result)[: len(task.metrics)] == list(task.metrics)
    assert result["unparseable"] == 1 and result["n"] == len(pred)
    for key in task.metrics:
        value = result[key]
        assert type(value) is float and not math.isnan(value)
        low = -1.0 if key in ("mcc", "pearson", "spearman") else 0.0
        assert low <= value <= 1.0, (key, value)
    assert main_score(task, result) == result[task.main_metric]
