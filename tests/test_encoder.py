"""The encoder baseline on the tiny random BERT: training, the record, STS-B, COPA, MultiRC, MiniLM offline."""

import dataclasses
import os

import pytest
import torch

from examples import EXAMPLES
from nlu_helpers import data, encoder, results
from nlu_helpers.evaluation import EvalResult

FAST = dict(encoder=encoder.TINY_ENCODER, max_steps=2, batch_size=4, progress=False)


def _variants(task: str, labels: list) -> list[dict]:
    """The task's example row with different labels and idx values (and a word changed, so rows differ)."""
    rows = []
    for i, label in enumerate(labels):
        row = dict(EXAMPLES[task], label=label, idx=i)
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def snippets():
    return list(data.load_split("movie-snippets", "train", limit=12, shuffle_seed=0)), list(
        data.load_split("movie-snippets", "validation", limit=8)
    )


def test_tiny_encoder_trains_and_returns_a_results_record(snippets, tmp_path):
    train, validation = snippets
    tuned = encoder.fine_tune("movie-snippets", train, seed=1, **FAST)
    assert tuned.settings["steps"] == 2 and len(tuned.losses) == 2 and tuned.settings["precision"] == "fp32"
    result = encoder.evaluate_encoder(tuned, validation, split="validation", n_bootstrap=20)
    record = result.to_dict()
    expected_keys = {f.name for f in dataclasses.fields(EvalResult)} - {"predictions"}
    assert set(record) == expected_keys
    assert (record["task"], record["mode"], record["k"], record["adapter"], record["unparseable"]) == (
        "movie-snippets", "encoder", 0, None, 0)
    assert record["model"] == encoder.TINY_ENCODER and record["n"] == 8
    assert 0.0 <= record["metrics"]["accuracy"] <= 1.0
    low, high = record["ci"]["accuracy"]
    assert low <= record["metrics"]["accuracy"] <= high
    assert set(record["label_share"]) == {"Negative", "Positive", "unparseable"}
    assert record["settings"]["train_rows"] == 12 and "versions" in record["settings"]
    assert len(result.predictions) == 8 and {"idx", "label", "prediction", "scores"} <= set(result.predictions[0])
    path = results.save_result(record | {"stage": "encoder"}, tmp_path, "encoder-movie-snippets", result.predictions)
    assert results.load_results(tmp_path)[0]["stage"] == "encoder" and path.exists()
    # seeded: the same seed trains to the same weights and the same predictions
    again = encoder.fine_tune("movie-snippets", train, seed=1, **FAST)
    assert again.settings["train_loss"] == pytest.approx(tuned.settings["train_loss"], abs=1e-6)
    assert encoder.predict(again, validation)[0] == encoder.predict(tuned, validation)[0]


def test_stsb_uses_a_regression_head_and_clipped_scores():
    rows = _variants("stsb", [5.0, 0.4, 2.5, 3.8])
    rows[1]["sentence2"] = "A man is playing a guitar."
    tuned = encoder.fine_tune("stsb", rows, **FAST)
    assert tuned.model.config.num_labels == 1 and tuned.model.config.problem_type == "regression"
    predictions, scores = encoder.predict(tuned, rows)
    assert scores.shape == (4, 1) and all(isinstance(p, float) and 0.0 <= p <= 5.0 for p in predictions)
    record = encoder.evaluate_encoder(tuned, rows, n_bootstrap=0).to_dict()
    assert set(record["metrics"]) == {"pearson", "spearman"} and record["label_share"] == {}


def test_copa_is_multiple_choice_over_its_two_options():
    rows = _variants("copa", [0, 1, 0, 1])
    rows[1]["question"] = "effect"
    assert encoder.copa_choices(rows[1])[0][0].endswith("What happened as a result?")
    tuned = encoder.fine_tune("copa", rows, **FAST)
    assert type(tuned.model).__name__.endswith("ForMultipleChoice")
    batch = encoder.MultipleChoiceCollator(tuned.tokenizer)(list(encoder.encode("copa", rows, tuned.tokenizer)))
    assert batch["input_ids"].shape[:2] == (4, 2) and batch["labels"].tolist() == [0, 1, 0, 1]
    predictions, scores = encoder.predict(tuned, rows)
    assert scores.shape == (4, 2) and set(predictions) <= {0, 1}
    assert encoder.evaluate_encoder(tuned, rows, n_bootstrap=0).metrics.keys() == {"accuracy"}


def test_multirc_reads_paragraph_against_question_and_option_and_scores_exact_match():
    keys = [(0, 0, 0), (0, 0, 1), (0, 1, 2), (0, 1, 3)]
    rows = [dict(EXAMPLES["multirc"], idx={"paragraph": p, "question": q, "answer": a}, label=a % 2) for p, q, a in keys]
    first, second = encoder.pair_texts("multirc", rows[0])
    assert first == rows[0]["paragraph"] and second == f"{rows[0]['question']} {rows[0]['answer']}"
    tuned = encoder.fine_tune("multirc", rows, **FAST)
    result = encoder.evaluate_encoder(tuned, rows, n_bootstrap=5)
    assert set(result.metrics) == {"f1a", "em"} and result.metrics["em"] in (0.0, 0.5, 1.0)  # two questions


def test_pairs_for_wic_and_wsc_and_the_clear_errors(snippets):
    word_first, second = encoder.pair_texts("wic", EXAMPLES["wic"])
    assert word_first.startswith("place: ") and second == EXAMPLES["wic"]["sentence2"]
    assert encoder.pair_texts("wsc", EXAMPLES["wsc"])[1] == 'Does "He" refer to "Mark"?'
    with pytest.raises(ValueError, match="leaves out task 'record'.*supported tasks: .*copa"):
        encoder.fine_tune("record", [EXAMPLES["record"]], **FAST)
    with pytest.raises(ValueError, match="epochs must be a positive number"):
        encoder.fine_tune("movie-snippets", snippets[0], epochs=0, **FAST)
    test_rows = [dict(r, label=-1) for r in snippets[1]]
    with pytest.raises(ValueError, match="training rows need gold labels"):
        encoder.fine_tune("movie-snippets", test_rows, **FAST)


def test_unlabelled_rows_are_predicted_but_not_evaluated(snippets):
    train, validation = snippets
    tuned = encoder.fine_tune("movie-snippets", train, **FAST)
    hidden = [dict(r, label=-1) for r in validation]
    predictions, _ = encoder.predict(tuned, hidden)
    assert len(predictions) == len(hidden) and set(predictions) <= {0, 1}
    with pytest.raises(ValueError, match="no gold label.*submission.write_submission"):
        encoder.evaluate_encoder(tuned, hidden)


def test_offline_minilm_folder_loads_without_the_hub():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest before any import
    folder = encoder.minilm_dir()
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= {p.name for p in folder.iterdir()}
    assert encoder.minilm_dir() == folder  # second call: from the cache, no unpacking
    from nlu_helpers.tasks import get_task

    tokenizer, model = encoder._load(get_task("movie-snippets"), encoder.OFFLINE_ENCODER)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_labels) == (384, 6, 2)
    batch = tokenizer(["a gorgeous, witty film", "dull."], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 2)


def test_mixed_precision_is_bf16_only_where_it_is_native(monkeypatch):
    """A T4 (compute capability 7.5) emulates bf16 and torch.cuda.is_bf16_supported() says yes: fp16 there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, expected in (((7, 5), "fp16"), ((8, 0), "bf16")):  # torch's answers on such a GPU
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True, native=capability >= (8, 0): including_emulation or native)
        assert encoder._precision(torch.device("cuda")) == expected, capability
    assert encoder._precision(torch.device("cpu")) == "fp32"


def test_a_hub_encoder_missing_offline_names_the_offline_encoders(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from nlu_helpers.models import HubUnreachable
    from nlu_helpers.tasks import get_task

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(HubUnreachable, match=r"'bert-base-uncased'.*HF_HUB_OFFLINE=1.*'minilm-l6', 'tiny-random-bert'"):
        encoder._load(get_task("movie-snippets"), encoder.HUB_ENCODER)
