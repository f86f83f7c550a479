"""Parsing and the reward, including whatever a model may write."""

import math

import pytest
from hypothesis import given, settings, strategies as st

from examples import EXAMPLES
from nlu_helpers.parsing import parse_answer
from nlu_helpers.rewards import RewardConfig, reward, reward_range
from nlu_helpers.tasks import TASKS, get_task, record_candidates


@pytest.mark.parametrize("text,expected", [
    (" Positive </Judgement>", 1),
    (" Negative </Judgement><Analysis> it is dull </Analysis>", 0),
    ("Positive</Judgement>", 1),
    (" Positive. </Judgement>", 1),
    (" Positive", None),  # no closing tag
    (" Positive or Negative </Judgement>", None),  # both label words
    (" Neutral </Judgement>", None),  # no label word
    (" positive </Judgement>", None),  # strict is case-sensitive
    (" Positively </Judgement>", None),  # whole words only
    (" </Judgement> Positive", None),  # the answer comes before the tag
    ("", None),
])
def test_strict_parsing(text, expected):
    assert parse_answer("sst2", text) == expected


@pytest.mark.parametrize("text,expected", [
    (" positive", 1),  # no closing tag: the whole text counts
    (" NEGATIVE </Judgement> positive", 0),  # the closing tag still ends the answer
    (" positive and negative", None),  # still never a guess
    (" great film", None),
])
def test_lenient_parsing(text, expected):
    assert parse_answer("sst2", text, strict=False) == expected


@pytest.mark.parametrize("task,text,expected", [
    ("cola", " No </Judgement>", 0),
    ("cola", " Not sure </Judgement>", None),  # "No" inside "Not" is no answer
    ("qnli", " Yes </Judgement>", 0),  # 0 = entailment
    ("mnli", " Contradiction </Judgement>", 2),
    ("cb", " Contradiction </Judgement>", 1),
    ("copa", " Option two </Judgement>", 1),
    ("copa", " Option </Judgement>", None),
    ("wic", " Same </Judgement>", 1),
    ("multirc", " True </Judgement>", 1),
    ("record", " Yes </Judgement>", 1),
    ("stsb", " 3.8 </Judgement>", 3.8),
    ("stsb", " about 4, maybe 3 </Judgement>", 4.0),
    ("stsb", " 7 </Judgement>", None),  # outside 0..5
    ("stsb", " high </Judgement>", None),
    ("stsb", " .5 </Judgement>", 0.5),
])
def test_parsing_per_task(task, text, expected):
    assert parse_answer(task, text) == expected


def _row(name):
    return record_candidates(EXAMPLES[name])[0] if name == "record" else EXAMPLES[name]


def test_reward_table():
    row = EXAMPLES["sst2"]  # gold: Negative
    assert reward("sst2", " Negative </Judgement>", row) == 1.0
    assert reward("sst2", " Positive </Judgement>", row) == -1.0
    assert reward("sst2", " Negative", row) == -3.0
    stsb = EXAMPLES["stsb"]  # gold 5.0
    assert reward("stsb", " 4.5 </Judgement>", stsb) == pytest.approx(2.0)
    assert reward("stsb", " 0 </Judgement>", stsb) == pytest.approx(-2.5)
    assert reward("stsb", " none </Judgement>", stsb) == -2.5
    assert reward("record", " Yes </Judgement>", _row("record")) == 1.0


def test_reward_values_are_configurable():
    config = RewardConfig(correct=2.0, wrong=0.0, unparseable=-1.0)
    assert reward("sst2", " Negative </Judgement>", EXAMPLES["sst2"], config) == 2.0
    assert reward("sst2", "??", EXAMPLES["sst2"], config) == -1.0
    with pytest.raises(ValueError, match="correct"):
        RewardConfig(correct=-1.0, wrong=1.0)


def _allowed(name, value):
    task = get_task(name)
    if task.kind == "regression":
        low, high = reward_range(task)
        return low <= value <= high
    return value in (1.0, -1.0, -3.0)


label_words = sorted({w for t in TASKS.values() for w in (t.label_words or t.candidate_words or ())})
model_text = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(label_words + ["</Judgement>", "<Judgement>", " ", "3.5", "-1", "nan", "\n", "."]),
             max_size=8).map("".join),
)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(TASKS)), text=model_text)
def test_any_string_gives_an_allowed_reward(name, text):
    value = reward(name, text, _row(name))
    assert math.isfinite(value) and _allowed(name, value)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(TASKS)), text=model_text, strict=st.booleans())
def test_parsing_never_raises_and_returns_a_valid_label(name, text, strict):
    task = get_task(name)
    parsed = parse_answer(task, text, strict=strict)
    if task.kind == "regression":
        assert parsed is None or 0.0 <= parsed <= 5.0
    else:
        assert parsed is None or parsed in range(len(task.answer_words))
