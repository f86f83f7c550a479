"""The registry: every GLUE and SuperGLUE task builds a prompt, a target and a metric."""

import pytest

from examples import EXAMPLES
from nlu_helpers import metrics
from nlu_helpers.parsing import parse_answer
from nlu_helpers.prompts import JUDGEMENT_CLOSE, JUDGEMENT_OPEN, select_shots
from nlu_helpers.tasks import GLUE_TASKS, SUPERGLUE_TASKS, TASKS, get_task, record_candidates, register_task

PAPER_TASKS = {
    "glue": ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli", "ax"],
    "superglue": ["boolq", "cb", "copa", "multirc", "record", "superglue-rte", "wic", "wsc", "axb", "axg"],
}
# label words per label id, as in paper-facts (the hub's label order)
PAPER_LABEL_WORDS = {
    "cola": ["No", "Yes"], "sst2": ["Negative", "Positive"], "mrpc": ["No", "Yes"], "qqp": ["No", "Yes"],
    "qnli": ["Yes", "No"], "rte": ["Yes", "No"], "axb": ["Yes", "No"], "wnli": ["No", "Yes"],
    "mnli": ["Entailment", "Neutral", "Contradiction"], "ax": ["Entailment", "Neutral", "Contradiction"],
    "cb": ["Entailment", "Contradiction", "Neutral"], "boolq": ["No", "Yes"], "wsc": ["No", "Yes"],
    "wic": ["Different", "Same"], "multirc": ["False", "True"], "copa": ["Option one", "Option two"],
    "superglue-rte": ["Yes", "No"], "axg": ["Yes", "No"], "movie-snippets": ["Negative", "Positive"],
}


def test_all_twenty_tasks_are_registered():
    assert list(GLUE_TASKS) == PAPER_TASKS["glue"]
    assert list(SUPERGLUE_TASKS) == PAPER_TASKS["superglue"]
    assert set(TASKS) >= set(PAPER_TASKS["glue"] + PAPER_TASKS["superglue"] + ["movie-snippets"])


@pytest.mark.parametrize("name,expected", [
    ("SST2", "sst2"), ("sst-2", "sst2"), ("RTE", "rte"), ("superglue-rte", "superglue-rte"),
    ("SuperGLUE-RTE", "superglue-rte"), ("axb", "axb"), ("AX-b", "axb"), ("ax_g", "axg"),
    ("MNLI", "mnli"), ("mnli-mm", "mnli"), ("STS-B", "stsb"), ("ReCoRD", "record"), ("wsc.fixed", "wsc"),
    ("offline", "movie-snippets"),
])
def test_names_are_case_insensitive(name, expected):
    assert get_task(name).name == expected


def test_unknown_task_names_the_known_ones():
    with pytest.raises(KeyError, match=r"unknown task 'sst3'.*cola.*wsc"):
        get_task("sst3")


@pytest.mark.parametrize("name", list(PAPER_LABEL_WORDS))
def test_label_words_follow_the_paper(name):
    assert list(get_task(name).label_words) == PAPER_LABEL_WORDS[name]


def test_stsb_and_record_have_no_label_words():
    assert get_task("stsb").label_words is None
    assert get_task("record").label_words is None


def test_mnli_is_evaluated_on_matched_and_mismatched():
    assert get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")


def _one_row(name):
    example = EXAMPLES[name]
    return record_candidates(example)[0] if name == "record" else example


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_builds_prompt_target_and_metric(name):
    task = get_task(name)
    example = _one_row(name)
    prompt = task.build_prompt(example)
    assert prompt.endswith(f"Assistant: {JUDGEMENT_OPEN}")
    assert task.description in prompt
    target = task.target(example)
    assert target.endswith(f" {JUDGEMENT_CLOSE}") and target.startswith(" ")
    # the target is what a perfect model writes, so it parses back to the gold label
    assert parse_answer(task, target) == pytest.approx(example["label"], abs=0.05)
    # every field the prompt promises shows up with its value
    for value in (v for k, v in example.items() if isinstance(v, str) and k not in ("answers",)):
        if "@" not in value and "\n" not in value:
            assert value in prompt, (name, value)
    gold = EXAMPLES[name]["answers"] if name == "record" else example["label"]
    pred = EXAMPLES[name]["answers"][0] if name == "record" else example["label"]
    groups = [0] if task.group_by else None
    if name == "axg":
        result = metrics.compute(task, [pred, pred], [gold, gold], groups=[0, 0])
    else:
        result = metrics.compute(task, [pred], [gold], groups=groups)
    assert set(task.metrics) <= set(result)


@pytest.mark.parametrize("name", ["sst2", "mnli", "copa", "stsb", "wic"])
def test_few_shot_prompt_shows_each_demonstration_with_its_answer(name):
    task = get_task(name)
    shot = dict(EXAMPLES[name])
    prompt = task.build_prompt(EXAMPLES[name], shots=[shot, shot])
    assert prompt.count(f"Assistant: {JUDGEMENT_OPEN}{task.target(shot)}") == 2
    opens_in_format_line = get_task(name).build_prompt(EXAMPLES[name]).count(JUDGEMENT_OPEN) - 1
    assert prompt.count(JUDGEMENT_OPEN) == opens_in_format_line + 2 + 1  # format line + two shots + the final open tag
    assert prompt.index("Here are some solved examples.") < prompt.index("Now the case to judge.")


def test_answer_format_lists_every_complete_answer():
    line = get_task("mnli").build_prompt(EXAMPLES["mnli"]).splitlines()[1]
    assert line == ("Reply first with one of these answers: <Judgement> Entailment </Judgement>, "
                    "<Judgement> Neutral </Judgement> or <Judgement> Contradiction </Judgement>.")
    assert "where X is one of: Negative, Positive" in get_task("sst2").build_prompt(EXAMPLES["sst2"], answer_format="placeholder")
    with pytest.raises(ValueError, match="'json'.*options, placeholder"):
        get_task("sst2").build_prompt(EXAMPLES["sst2"], answer_format="json")


def test_diagnostics_accept_their_training_task_fields():
    rte_row = EXAMPLES["superglue-rte"]
    assert "Premise: No Weapons" in get_task("axb").build_prompt(EXAMPLES["axb"], shots=[rte_row])


def test_record_expands_to_one_row_per_candidate():
    rows = record_candidates(EXAMPLES["record"])
    assert [(r["entity"], r["label"]) for r in rows] == [("Afghanistan", 1), ("Mariam", 0)]
    prompt = get_task("record").build_prompt(rows[1])
    assert "women in Mariam's prison" in prompt and "@placeholder" not in prompt
    with pytest.raises(KeyError, match="record_candidates"):
        get_task("record").build_prompt(EXAMPLES["record"])


def test_missing_field_is_named():
    with pytest.raises(KeyError, match=r"needs field 'sentence'.*\['label', 'text'\]"):
        get_task("sst2").build_prompt({"text": "x", "label": 1})


@pytest.mark.parametrize("name,label", [("sst2", 2), ("sst2", -1), ("mnli", 3), ("cola", True), ("stsb", 7.5)])
def test_labels_out_of_range_are_refused(name, label):
    example = dict(_one_row(name), label=label)
    with pytest.raises(ValueError, match="out of range"):
        get_task(name).target(example)


def test_shots_are_seeded_and_first_k_is_offered():
    rows = [{"sentence": f"s{i}", "label": i % 2} for i in range(50)]
    a = select_shots(rows, 5, seed=3)
    assert a == select_shots(rows, 5, seed=3)
    assert a != select_shots(rows, 5, seed=4)
    assert select_shots(rows, 5, strategy="first") == rows[:5]
    assert rows[7] not in select_shots(rows, 49, seed=0, exclude=rows[7])
    with pytest.raises(ValueError, match="'last'.*'random', 'first'"):
        select_shots(rows, 5, strategy="last")
    with pytest.raises(ValueError, match="k=60"):
        select_shots(rows, 60)


def test_register_a_task_from_a_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("review,stars\ngood,1\nbad,0\n")
    task = register_task(
        "My-Reviews", data_files={"train": path}, text_fields=["review"], label_words=["Bad", "Good"],
        instruction="Task: decide whether the review is Good or Bad.", label_field="stars", replace=True,
    )
    assert get_task("my_reviews") is task
    assert task.build_prompt({"review": "fine", "label": 1}).count("Review: fine") == 1
    with pytest.raises(ValueError, match="taken"):
        register_task("sst2", data_files={"train": path}, text_fields=["review"],
                      label_words=["a", "b"], instruction="x")
    with pytest.raises(ValueError, match=r"\.txt.*\.csv, \.json, \.jsonl"):
        register_task("other", data_files={"train": tmp_path / "a.txt"}, text_fields=["x"],
                      label_words=["a", "b"], instruction="x")
