"""Tests for nlu_helpers.data: the offline split, custom files, and the hub path offline."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from nlu_helpers import assets, data
from nlu_helpers.tasks import get_task, register_task

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    """A private NLU_WORKBOOK_CACHE holding a copy of the (once downloaded) vader sdist."""
    archive = assets.fetch(assets.VADER_SDIST)  # the user's cache: downloads at most once
    root = tmp_path_factory.mktemp("nlu-cache")
    (root / "archives").mkdir()
    shutil.copy(archive, root / "archives" / archive.name)
    return root


@pytest.fixture
def cache(cache_root, monkeypatch) -> Path:
    monkeypatch.setenv("NLU_WORKBOOK_CACHE", str(cache_root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache_root


@pytest.fixture
def snippets(cache) -> dict:
    return {split: data.load_split("movie-snippets", split) for split in SPLITS}


def _source_rows() -> list[tuple[int, float, str]]:
    """The ground-truth file parsed independently of the module's recipe."""
    text = data._snippets_text()
    return [(int(i), float(r), s) for i, r, s in (line.split("\t") for line in text.split("\r\n") if line)]


def test_offline_splits_disjoint_and_complete(snippets):
    sentences = {split: set(ds["sentence"]) for split, ds in snippets.items()}
    assert all(len(sentences[s]) == len(snippets[s]) for s in SPLITS)  # no duplicate inside a split
    assert not sentences["train"] & sentences["validation"]
    assert not sentences["train"] & sentences["test"]
    assert not sentences["validation"] & sentences["test"]
    source = _source_rows()
    assert len(source) == 10605
    kept = {s for _, r, s in source if abs(r) >= 0.5}
    assert sum(len(ds) for ds in snippets.values()) == len(kept) == 10070
    assert set().union(*sentences.values()) == kept
    assert {s: len(ds) for s, ds in snippets.items()} == {"train": 8056, "validation": 1007, "test": 1007}


def test_offline_labels_follow_rating(snippets):
    ratings = {i: r for i, r, _ in _source_rows()}
    for split, ds in snippets.items():
        assert ds.column_names == ["sentence", "label", "idx", "rating"]
        for row in ds:
            assert abs(row["rating"]) >= 0.5
            assert row["label"] == (1 if row["rating"] > 0 else 0)
            assert row["rating"] == ratings[row["idx"]]
        share = sum(ds["label"]) / len(ds)
        assert 0.4 < share < 0.6, (split, share)
        # the file lists positives first; the split order must not
        assert 0.3 < sum(ds["label"][:100]) / 100 < 0.7, split


def test_offline_split_is_pinned_and_survives_cache_rebuild(cache, snippets, capsys):
    folder = cache / "data" / "movie-snippets"
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "test.jsonl", "train.jsonl", "validation.jsonl"]
    first = {s: ds.to_list() for s, ds in snippets.items()}
    # a golden value: the same test rows on every machine and Python version
    digest = hashlib.sha256(json.dumps([r["idx"] for r in first["test"]]).encode()).hexdigest()
    assert digest == PINNED_TEST_IDX_SHA256
    shutil.rmtree(folder)
    capsys.readouterr()
    again = {s: data.load_split("movie-snippets", s).to_list() for s in SPLITS}
    assert capsys.readouterr() == ("", "")  # silent on success
    assert again == first
    assert data.build_movie_snippets() == first


def test_damaged_cache_is_rebuilt(cache, snippets):
    path = cache / "data" / "movie-snippets" / "validation.jsonl"
    path.write_text(path.read_text(encoding="utf-8")[:500], encoding="utf-8")
    assert data.load_split("movie-snippets", "validation").to_list() == snippets["validation"].to_list()


def test_fetch_failure_reaches_user_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("NLU_WORKBOOK_CACHE", str(tmp_path))
    message = "could not fetch vaderSentiment==3.3.2 from the package index (no route); fix: allow pip"

    def fail(archive):
        raise assets.AssetUnavailable(message)

    monkeypatch.setattr(assets, "fetch", fail)
    with pytest.raises(assets.AssetUnavailable) as info:
        data.load_split("movie-snippets", "train")
    assert str(info.value) == message


def test_limit_and_shuffle(snippets):
    train = snippets["train"]
    assert data.load_split("offline", "train", limit=10).to_list() == train.select(range(10)).to_list()
    assert len(data.load_split("movie-snippets", "test", limit=10**6)) == 1007
    a = data.load_split("movie-snippets", "train", limit=20, shuffle_seed=1)
    b = data.load_split("movie-snippets", "train", limit=20, shuffle_seed=1)
    c = data.load_split("movie-snippets", "train", limit=20, shuffle_seed=2)
    assert a.to_list() == b.to_list() == train.shuffle(seed=1).select(range(20)).to_list()
    assert a["idx"] != c["idx"]
    assert a["idx"] != train["idx"][:20]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="limit"):
            data.load_split("movie-snippets", "train", limit=bad)


def test_unknown_split_names_allowed_splits(cache):
    with pytest.raises(ValueError) as info:
        data.load_split("movie-snippets", "dev")
    assert "'dev'" in str(info.value)
    for name in SPLITS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="validation_matched"):  # checked before any network use
        data.load_split("mnli", "validation")


def _write_custom(tmp_path: Path, suffix: str, rows: list[dict]) -> Path:
    path = tmp_path / f"rows{suffix}"
    if suffix == ".csv":
        columns = list(rows[0])
        lines = [",".join(columns)] + [",".join(f'"{r[c]}"' if isinstance(r[c], str) else str(r[c]) for c in columns) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_custom_task_round_trips(cache, tmp_path, suffix):
    rows = [
        {"review": "Great fun, with a twist", "stars": 1},
        {"review": "Dull and far too long", "stars": 0},
        {"review": "I would see it again", "stars": 1},
    ]
    path = _write_custom(tmp_path, suffix, rows)
    task = register_task(
        f"test-data-custom{suffix.replace('.', '-')}", data_files={"train": path, "validation": path},
        text_fields=["review"], label_words=["Bad", "Good"], label_field="stars",
        instruction="Task: decide whether the review is Good or Bad.", replace=True,
    )
    ds = data.load_split(task.name, "validation")
    assert ds.to_list() == [{"review": r["review"], "label": r["stars"], "idx": i} for i, r in enumerate(rows)]
    assert data.demonstration_pool(task).to_list() == ds.to_list()
    assert task.build_prompt(ds[0]).endswith("Review: Great fun, with a twist\nAssistant: <Judgement>")
    with pytest.raises(ValueError, match="allowed: \\['train', 'validation'\\]"):
        data.load_split(task, "test")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_custom_task_bad_label_names_file_row_and_value(cache, tmp_path, suffix):
    rows = [{"text": "fine", "label": 1}, {"text": "odd", "label": 7}]
    path = _write_custom(tmp_path, suffix, rows)
    task = register_task(
        "test-data-bad-label", data_files={"train": path}, text_fields=["text"],
        label_words=["No", "Yes"], instruction="Task: say Yes or No.", replace=True,
    )
    with pytest.raises(ValueError) as info:
        data.load_split(task, "train")
    message = str(info.value)
    assert str(path) in message and "row 2" in message and "label 7" in message and "0..1" in message


def test_custom_task_missing_label_column(cache, tmp_path):
    path = _write_custom(tmp_path, ".jsonl", [{"text": "fine", "label": 1}])
    task = register_task(
        "test-data-missing-label", data_files={"train": path}, text_fields=["text"], label_field="gold",
        label_words=["No", "Yes"], instruction="Task: say Yes or No.", replace=True,
    )
    with pytest.raises(KeyError, match="'gold'"):
        data.load_split(task, "train")


def test_hub_offline_fails_fast_with_one_line(cache):
    start = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        data.load_split("sst2", "validation", limit=5)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "\n" not in message
    assert "SST-2" in message and "nyu-mll/glue" in message and "unreachable" in message
    assert "'movie-snippets'" in message


def test_demonstration_pool_uses_train_task(cache, monkeypatch):
    calls = []
    monkeypatch.setattr(data, "load_split", lambda task, split: calls.append((get_task(task).name, split)))
    data.demonstration_pool("ax")
    data.demonstration_pool("AX-b")
    data.demonstration_pool("axg", split="validation")
    data.demonstration_pool("cola")
    assert calls == [("mnli", "train"), ("superglue-rte", "train"), ("superglue-rte", "validation"), ("cola", "train")]


def test_demonstration_pool_offline(snippets):
    assert data.demonstration_pool("movie-snippets").to_list() == snippets["train"].to_list()


PINNED_TEST_IDX_SHA256 = "cb125ef757ba60f84876aae45b27fbf12f2e1d780e913ea49b1264c63cf2b950"


# -- custom files: what a hand-made file gets wrong --------------------------------------------

def _custom(tmp_path, name, text, *, suffix=".csv", split="train"):
    path = tmp_path / f"{name}{suffix}"
    path.write_text(text, encoding="utf-8")
    return path, register_task(f"test-data-{name}", data_files={split: path}, text_fields=["text"],
                               label_words=["No", "Yes"], instruction="Task: say Yes or No.", replace=True)


@pytest.mark.parametrize("suffix,text", [
    (".csv", "text,label\nfine,1\n,0\nok,1\n"),
    (".csv", 'text,label\nfine,1\n"   ",0\n'),
    (".jsonl", '{"text": "fine", "label": 1}\n{"text": null, "label": 0}\n'),
])
def test_blank_text_is_refused_with_its_row(tmp_path, suffix, text):
    path, task = _custom(tmp_path, "blank-text", text, suffix=suffix)
    with pytest.raises(ValueError) as info:
        data.load_split(task, "train")
    assert str(path) in str(info.value) and "row 2" in str(info.value) and "'text' is blank" in str(info.value)


@pytest.mark.parametrize("suffix,text", [(".csv", ""), (".jsonl", ""), (".csv", "\n  \n"), (".jsonl", "\n")])
def test_empty_file_is_named(tmp_path, suffix, text):
    path, task = _custom(tmp_path, "empty", text, suffix=suffix)
    with pytest.raises(ValueError, match="is empty") as info:
        data.load_split(task, "train")
    assert str(path) in str(info.value)


def test_header_only_file_is_an_empty_split(tmp_path):
    path, task = _custom(tmp_path, "header-only", "text,label\n")
    with pytest.raises(ValueError, match=r"has no rows \(split 'train' is empty\)") as info:
        data.load_split(task, "train")
    assert str(path) in str(info.value)


def test_labels_written_as_whole_floats_are_label_ids(tmp_path):
    _, task = _custom(tmp_path, "float-labels", "text,label\nfine,1.0\nbad,0.0\n")
    assert data.load_split(task, "train")["label"] == [1, 0]
    _, task = _custom(tmp_path, "text-labels", '{"text": "fine", "label": "1"}\n{"text": "bad", "label": 0}\n', suffix=".jsonl")
    assert data.load_split(task, "train")["label"] == [1, 0]
    _, task = _custom(tmp_path, "half-label", "text,label\nfine,1.0\nbad,0.5\n")
    with pytest.raises(ValueError, match=r"row 2: .*label 0.5 is out of range"):
        data.load_split(task, "train")


def test_blank_label_is_reported_against_its_row(tmp_path):
    _, task = _custom(tmp_path, "blank-label", "text,label\nfine,1\nbad,\nok,0\n")
    with pytest.raises(ValueError) as info:
        data.load_split(task, "train")
    assert "row 2: the label is blank" in str(info.value)
    assert "row 1" not in str(info.value) and "row 3" not in str(info.value)


def test_parquet_files_and_hidden_test_labels(tmp_path):
    import pyarrow
    import pyarrow.parquet

    path = tmp_path / "rows.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"text": ["fine", "bad"], "label": [1, 0]}), path)
    hidden = tmp_path / "test.csv"
    hidden.write_text("text\nwho knows\n", encoding="utf-8")
    task = register_task("test-data-parquet", data_files={"train": path, "test": hidden}, text_fields=["text"],
                         label_words=["No", "Yes"], instruction="Task: say Yes or No.", replace=True)
    assert data.load_split(task, "train").to_list() == [{"text": "fine", "label": 1, "idx": 0}, {"text": "bad", "label": 0, "idx": 1}]
    assert data.load_split(task, "test")["label"] == [-1]  # a test split may hide its labels, as GLUE's do
    with pytest.raises(KeyError, match="no label column 'label'"):
        _custom(tmp_path, "no-labels", "text\nfine\n")  # a training split may not
        data.load_split("test-data-no-labels", "train")
