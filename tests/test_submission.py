"""Submission files: names, headers, label strings, MultiRC nesting, the seeded fill-in, errors."""

import json
import zipfile

import datasets
import pytest

from examples import EXAMPLES
from nlu_helpers import submission
from nlu_helpers.tasks import GLUE_TASKS, SUPERGLUE_TASKS

# What the servers accept, written out by hand (sources in the module docstring): for each
# task, the file and the string each hub label id becomes.
GLUE_EXPECTED = {
    "cola": ("CoLA.tsv", ["0", "1"]),
    "sst2": ("SST-2.tsv", ["0", "1"]),
    "mrpc": ("MRPC.tsv", ["0", "1"]),
    "qqp": ("QQP.tsv", ["0", "1"]),
    "wnli": ("WNLI.tsv", ["0", "1"]),
    "qnli": ("QNLI.tsv", ["entailment", "not_entailment"]),
    "rte": ("RTE.tsv", ["entailment", "not_entailment"]),
    "ax": ("AX.tsv", ["entailment", "neutral", "contradiction"]),
}
SUPERGLUE_EXPECTED = {
    "boolq": ("BoolQ.jsonl", ["false", "true"]),
    "wic": ("WiC.jsonl", ["false", "true"]),
    "wsc": ("WSC.jsonl", ["False", "True"]),
    "cb": ("CB.jsonl", ["entailment", "contradiction", "neutral"]),
    "copa": ("COPA.jsonl", [0, 1]),
    "superglue-rte": ("RTE.jsonl", ["entailment", "not_entailment"]),
    "axb": ("AX-b.jsonl", ["entailment", "not_entailment"]),
    "axg": ("AX-g.jsonl", ["entailment", "not_entailment"]),
}


def _test_rows(task: str, n: int) -> list[dict]:
    """A fake test split: the task's example row n times, idx 10, 11, ..., labels hidden (-1)."""
    return [dict(EXAMPLES[task], idx=10 + i, label=-1) for i in range(n)]


def _tsv(path):
    return [line.split("\t") for line in path.read_text().splitlines()]


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_benchmark_task_has_a_file_name():
    assert set(submission.SUBMISSION_TASKS) == set(GLUE_TASKS) | set(SUPERGLUE_TASKS)


@pytest.mark.parametrize("task", sorted(GLUE_EXPECTED))
def test_glue_tsv_has_the_header_indexes_and_label_strings(task, tmp_path):
    filename, strings = GLUE_EXPECTED[task]
    rows = _test_rows(task, len(strings))
    path = submission.write_submission(task, list(range(len(strings))), rows, tmp_path)
    assert path == tmp_path / filename
    assert _tsv(path) == [["index", "prediction"]] + [[str(10 + i), s] for i, s in enumerate(strings)]


def test_stsb_writes_clipped_floats_with_three_decimals(tmp_path):
    path = submission.write_submission("stsb", [3.14159, 5.7, -0.2], _test_rows("stsb", 3), tmp_path)
    assert path.name == "STS-B.tsv"
    assert _tsv(path) == [["index", "prediction"], ["10", "3.142"], ["11", "5.000"], ["12", "0.000"]]


def test_mnli_file_comes_from_the_split_name(tmp_path):
    rows = _test_rows("mnli", 3)
    matched = submission.write_submission("mnli", [0, 1, 2], rows, tmp_path, split="test_matched")
    assert matched.name == "MNLI-m.tsv"
    assert [r[1] for r in _tsv(matched)[1:]] == ["entailment", "neutral", "contradiction"]
    hub_like = datasets.Dataset.from_list(rows, split=datasets.Split("test_mismatched"))
    assert submission.write_submission("mnli", [0, 0, 0], hub_like, tmp_path).name == "MNLI-mm.tsv"
    with pytest.raises(ValueError, match="test_matched"):
        submission.write_submission("mnli", [0, 0, 0], rows, tmp_path)


@pytest.mark.parametrize("task", sorted(SUPERGLUE_EXPECTED))
def test_superglue_jsonl_has_idx_and_label_strings(task, tmp_path):
    filename, strings = SUPERGLUE_EXPECTED[task]
    rows = _test_rows(task, len(strings))
    path = submission.write_submission(task, list(range(len(strings))), rows, tmp_path)
    assert path == tmp_path / filename
    assert _jsonl(path) == [{"idx": 10 + i, "label": s} for i, s in enumerate(strings)]


def test_multirc_nests_answers_under_questions_under_paragraphs(tmp_path):
    base = EXAMPLES["multirc"]
    keys = [(0, 0, 0), (0, 0, 1), (0, 1, 2), (1, 2, 3)]
    rows = [dict(base, idx={"paragraph": p, "question": q, "answer": a}, label=-1) for p, q, a in keys]
    path = submission.write_submission("multirc", [1, 0, 1, 0], rows, tmp_path)
    assert path.name == "MultiRC.jsonl"
    assert _jsonl(path) == [
        {"idx": 0, "passage": {"questions": [
            {"idx": 0, "answers": [{"idx": 0, "label": 1}, {"idx": 1, "label": 0}]},
            {"idx": 1, "answers": [{"idx": 2, "label": 1}]},
        ]}},
        {"idx": 1, "passage": {"questions": [{"idx": 2, "answers": [{"idx": 3, "label": 0}]}]}},
    ]


def test_record_writes_the_query_idx_and_the_entity_text(tmp_path):
    rows = [dict(EXAMPLES["record"], idx={"passage": 4, "query": 7 + i}, answers=[]) for i in range(2)]
    path = submission.write_submission("record", ["Afghanistan", "Mariam"], rows, tmp_path)
    assert path.name == "ReCoRD.jsonl"
    assert _jsonl(path) == [{"idx": 7, "label": "Afghanistan"}, {"idx": 8, "label": "Mariam"}]


def test_unparseable_answers_get_seeded_random_labels_and_are_counted(tmp_path, capsys):
    rows = _test_rows("boolq", 6)
    predictions = [1, None, 0, None, None, 1]
    filled, count = submission.fill_unparseable("boolq", predictions, rows, seed=3)
    assert count == 3
    assert [filled[i] for i in (0, 2, 5)] == [1, 0, 1] and all(p in (0, 1) for p in filled)
    assert submission.fill_unparseable("boolq", predictions, rows, seed=3) == (filled, 3)  # seeded
    assert predictions == [1, None, 0, None, None, 1]  # the caller's list is left alone
    path = submission.write_submission("boolq", predictions, rows, tmp_path, seed=3)
    assert "3 unparseable filled" in capsys.readouterr().out
    assert [line["label"] for line in _jsonl(path)] == [["false", "true"][p] for p in filled]
    # ReCoRD fills with one of the row's own candidate entities; STS-B with a score in [0, 5]
    record_rows = [dict(EXAMPLES["record"], idx={"passage": 0, "query": 0})]
    assert submission.fill_unparseable("record", [None], record_rows)[0][0] in EXAMPLES["record"]["entities"]
    assert 0.0 <= submission.fill_unparseable("stsb", [None], _test_rows("stsb", 1))[0][0] <= 5.0


def test_clear_errors(tmp_path):
    rows = _test_rows("sst2", 2)
    with pytest.raises(ValueError, match="2 rows"):
        submission.write_submission("sst2", [0], rows, tmp_path)
    with pytest.raises(ValueError, match="no leaderboard submission.*allowed tasks"):
        submission.write_submission("movie-snippets", [0, 1], rows, tmp_path)
    with pytest.raises(ValueError, match=r"prediction 2 at row 1.*0\.\.1"):
        submission.write_submission("sst2", [0, 2], rows, tmp_path)
    with pytest.raises(ValueError, match="appears twice"):
        submission.write_submission("sst2", [0, 1], [dict(r, idx=5) for r in rows], tmp_path)
    with pytest.raises(KeyError, match="no 'idx'"):
        submission.write_submission("sst2", [0, 1], [{"sentence": "x", "label": -1}] * 2, tmp_path)


def test_zip_puts_the_files_at_the_root_and_refuses_mixed_benchmarks(tmp_path, capsys):
    folder = tmp_path / "glue"
    submission.write_submission("cola", [0, 1], _test_rows("cola", 2), folder)
    submission.write_submission("sst2", [1, 0], _test_rows("sst2", 2), folder)
    archive = submission.zip_submission(folder)
    assert archive == tmp_path / "glue.zip"
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["CoLA.tsv", "SST-2.tsv"]
        assert z.read("CoLA.tsv").decode().startswith("index\tprediction\n")
    assert "missing" in capsys.readouterr().out  # the other nine GLUE files are named
    submission.write_submission("boolq", [1, 0], _test_rows("boolq", 2), folder)
    with pytest.raises(ValueError, match="different servers"):
        submission.zip_submission(folder)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="no server accepts"):
        submission.zip_submission(tmp_path / "other")
