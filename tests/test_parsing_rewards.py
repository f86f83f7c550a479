"""Parsing and the reward, including whatever a model may write."""

import math

import pytest
from hypothesis import given, settings, strategies as st

from examples import EXAMPLES
from nlu_helpers.parsing import parse_answer
from nlu_helpers.rewards import RewardConfig, reward
from nlu_helpers.tasks import TASKS, Task, get_task, record_candidates, register_task


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
        return -2.5 <= value <= 2.5  # 2.5 - |prediction - gold| on 0..5, or -2.5 unparseable
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


# -- label words in any relation: one inside another, several tokens, different case ---------

def _task(*words):
    return Task(name="t-" + "-".join(w.lower().replace(" ", "") for w in words), title="t", benchmark="custom",
                description="Task: t.", fields=(("Text", ("text",)),), label_words=words,
                metrics=("accuracy",), main_metric="accuracy")


SURE = _task("Sure", "Not sure")  # the shorter word first: longest match must still win
GOOD = _task("Good", "Very Good", "Not Very Good")


@pytest.mark.parametrize("task,text,strict,expected", [
    (SURE, " Sure </Judgement>", True, 0),
    (SURE, " Not sure </Judgement>", True, 1),
    (SURE, " Not sure </Judgement>", False, 1),
    (SURE, " not SURE", False, 1),  # lenient: no closing tag, any case
    (SURE, " Not Sure </Judgement>", True, None),  # strict: the wrong case of "Not sure" is not "Sure"
    (SURE, " Sure, not sure </Judgement>", False, None),  # both labels: never a guess
    (SURE, " Not sure. Not sure. </Judgement>", True, 1),  # one label, written twice
    (SURE, " Unsure </Judgement>", True, None),  # whole words only
    (GOOD, " Very Good </Judgement>", True, 1),
    (GOOD, " Not Very Good </Judgement>", True, 2),
    (GOOD, " Good </Judgement>", True, 0),
    (GOOD, " not very good", False, 2),
    (GOOD, " Very Good or Good </Judgement>", True, None),
])
def test_label_words_inside_each_other_parse_right(task, text, strict, expected):
    assert parse_answer(task, text, strict=strict) == expected


def test_reward_follows_parsing_for_words_inside_each_other():
    assert reward(SURE, " Not sure </Judgement>", {"text": "x", "label": 1}) == 1.0
    assert reward(SURE, " Not sure </Judgement>", {"text": "x", "label": 0}) == -1.0
    assert reward(GOOD, " Very Good </Judgement>", {"text": "x", "label": 1}) == 1.0
    assert reward(GOOD, " Very Good </Judgement>", {"text": "x", "label": 0}) == -1.0


@pytest.mark.parametrize("words,message", [
    (("Yes", "yes"), "'yes' and 'Yes' differ only in letter case"),
    (("Good", "Good"), "'Good' is given twice"),
    (("Good", ""), "empty"),
    (("Good", " Bad"), "space"),
    (("Good", "Bad </Judgement>"), "answer tag"),
    (("Good",), "at least two"),
])
def test_label_words_are_checked_at_registration(tmp_path, words, message):
    with pytest.raises(ValueError, match=message) as info:
        _task(*words)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=message):
        register_task("t-words", data_files={"train": tmp_path / "t.csv"}, text_fields=["text"],
                      label_words=list(words), instruction="Task: t.")


@pytest.mark.parametrize("text,expected", [
    (" 4.0 </Judgement>", 4.0),
    (" 4e-1 </Judgement>", None),  # not 4 and not 1: the first number is no plain decimal
    (" 3.5e1 </Judgement>", None),  # not 3.5
    (" 4th </Judgement>", None),
    (" It is 4. </Judgement>", 4.0),
    (" Sentence2 scores 3 </Judgement>", 3.0),  # a word with a digit is no number
    (" -1 </Judgement>", None),
    (" +2.5 </Judgement>", 2.5),
    (" nan </Judgement>", None),
    (" 5.01 </Judgement>", None),
])
def test_stsb_reads_whole_numbers_in_range(text, expected):
    assert parse_answer("stsb", text) == expected


_pieces = st.sampled_from(["Good", "good", "Very", "Not", "sure", "Sure", "Option", "one", "A", "B"])
_word_sets = st.lists(st.lists(_pieces, min_size=1, max_size=3).map(" ".join), min_size=2, max_size=4).filter(
    lambda ws: len({w.casefold() for w in ws}) == len(ws))


@settings(max_examples=200, deadline=None)
@given(words=_word_sets, noise=st.sampled_from(["", " Well,", " I think"]), data=st.data())
def test_any_label_words_parse_back_in_both_modes(words, noise, data):
    task = _task(*words)
    label = data.draw(st.integers(0, len(words) - 1))
    target = task.target({"text": "x", "label": label})
    assert parse_answer(task, target) == label
    assert parse_answer(task, noise + target, strict=False) == label
    assert parse_answer(task, noise + " " + words[label].upper(), strict=False) == label
    assert reward(task, target, {"text": "x", "label": label}) == 1.0
    text = data.draw(st.lists(st.sampled_from(words + ["</Judgement>", " ", ".", "not"]), max_size=6).map("".join))
    for strict in (True, False):
        assert parse_answer(task, text, strict=strict) in (None, *range(len(words)))
