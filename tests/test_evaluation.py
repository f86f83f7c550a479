"""The evaluation engine on the tiny model: padding, stopping, both modes, aggregation."""

import pytest
import torch

from examples import EXAMPLES
from examples import teach
from nlu_helpers import evaluation, metrics
from nlu_helpers.models import TINY_MODEL, load_model
from nlu_helpers.prompts import JUDGEMENT_CLOSE
from nlu_helpers.tasks import get_task

SST2_ROWS = [
    {"sentence": "a gorgeous, witty, seductive movie.", "label": 1},
    {"sentence": "the plot is nothing but boilerplate clichés from start to finish, and the script is awful.", "label": 0},
    {"sentence": "dull.", "label": 0},
    {"sentence": "one of the year's best films, moving and funny in equal measure", "label": 1},
]


@pytest.fixture(scope="module")
def answering_model(tokenizer):
    """The tiny model after a few real gradient steps on one answer: it learns to write
    " Positive </Judgement>" and then keep going, so the stop string has work to do."""
    torch.manual_seed(0)
    model = load_model(TINY_MODEL, device="cpu")
    prompt = tokenizer(get_task("sst2").build_prompt(SST2_ROWS[0]))["input_ids"]
    answer = tokenizer(" Positive </Judgement> and more words after it", add_special_tokens=False)["input_ids"]
    teach(model, prompt, answer)
    return model


def _brute_force_loglik(model, tokenizer, prompt, continuation):
    p = tokenizer(prompt)["input_ids"]
    c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return sum(float(logp[len(p) - 1 + i, tok]) for i, tok in enumerate(c))


@pytest.mark.parametrize("task_name", ["sst2", "mnli", "copa", "stsb"])
def test_scores_equal_brute_force_loglikelihood_in_a_padded_batch(model, tokenizer, task_name):
    """Single-token label words take the one-pass path, multi-token ones the cached path;
    both must equal the plain full-sequence log-likelihood, padding or not."""
    task = get_task(task_name)
    row = EXAMPLES[task_name]
    short = dict(row)
    for key, value in row.items():
        if isinstance(value, str) and key != "question":
            short[key] = value[:12]
    prompts = [task.build_prompt(row), task.build_prompt(short)]
    conts = evaluation._continuations(task)
    scores = evaluation.score_continuations(model, tokenizer, prompts, conts, batch_size=2, progress=False)
    for i, prompt in enumerate(prompts):
        expected = [_brute_force_loglik(model, tokenizer, prompt, c) for c in conts]
        assert scores[i].tolist() == pytest.approx(expected, abs=2e-3)


def test_left_padding_gives_the_same_answer_alone_and_in_a_batch(answering_model, tokenizer):
    task = get_task("sst2")
    prompts = [task.build_prompt(row) for row in SST2_ROWS]
    batched = evaluation.generate_texts(answering_model, tokenizer, prompts, batch_size=4, max_new_tokens=12, progress=False)
    alone = [evaluation.generate_texts(answering_model, tokenizer, [p], batch_size=1, max_new_tokens=12, progress=False)[0]
             for p in prompts]
    assert batched == alone
    scores_batched = evaluation.score_continuations(answering_model, tokenizer, prompts, [" Negative", " Positive"], batch_size=4, progress=False)
    scores_alone = torch.cat([evaluation.score_continuations(answering_model, tokenizer, [p], [" Negative", " Positive"], progress=False) for p in prompts])
    assert torch.allclose(scores_batched, scores_alone, atol=1e-3)


def test_generation_stops_at_the_closing_tag(answering_model, tokenizer):
    task = get_task("sst2")
    texts = evaluation.generate_texts(answering_model, tokenizer, [task.build_prompt(SST2_ROWS[0])], max_new_tokens=30, progress=False)
    assert texts[0].strip() == f"Positive {JUDGEMENT_CLOSE}"
    rows = [SST2_ROWS[0], dict(SST2_ROWS[0], label=0)]
    result = evaluation.evaluate(answering_model, tokenizer, "sst2", rows, mode="generate", max_new_tokens=30,
                                 n_bootstrap=50, progress=False)
    assert result.unparseable == 0
    assert [r["prediction"] for r in result.predictions] == [1, 1]
    assert result.metrics["accuracy"] == 0.5
    assert result.label_share["Positive"] == {"predicted": 1.0, "gold": 0.5}


def test_both_modes_report_metrics_cis_and_unparseable(model, tokenizer):
    generated = evaluation.evaluate(model, tokenizer, "sst2", SST2_ROWS, mode="generate", max_new_tokens=4,
                                    n_bootstrap=100, progress=False, random_fill=True, split="validation")
    scored = evaluation.evaluate(model, tokenizer, "sst2", SST2_ROWS, mode="score", n_bootstrap=100, progress=False)
    # a random model never closes the tag in 4 tokens: every answer is unparseable and counted
    assert generated.unparseable == 4 and generated.metrics["accuracy"] == 0.0
    assert generated.metrics_random_fill is not None  # the authors' fill-in, reported beside
    assert scored.unparseable == 0 and scored.n == 4
    low, high = scored.ci["accuracy"]
    assert low <= scored.metrics["accuracy"] <= high
    record = scored.to_dict()
    assert {"task", "split", "model", "mode", "k", "metrics", "unparseable", "n", "seconds", "examples_per_s",
            "ci", "label_share", "settings"} <= set(record)
    assert record["settings"]["versions"]["torch"]


def test_few_shot_prompts_use_the_seeded_demonstrations(model, tokenizer):
    from nlu_helpers.prompts import select_shots

    shots = select_shots(SST2_ROWS, 2, seed=1)
    a = evaluation.evaluate(model, tokenizer, "sst2", SST2_ROWS, mode="score", shots=shots, n_bootstrap=0, progress=False)
    b = evaluation.evaluate(model, tokenizer, "sst2", SST2_ROWS, mode="score", shots=select_shots(SST2_ROWS, 2, seed=1),
                            n_bootstrap=0, progress=False)
    assert a.k == 2 and [r["scores"] for r in a.predictions] == [r["scores"] for r in b.predictions]


def test_calibration_divides_out_the_content_free_bias(model, tokenizer):
    plain = evaluation.evaluate(model, tokenizer, "sst2", SST2_ROWS, mode="score", n_bootstrap=0, progress=False)
    calibrated = evaluation.evaluate(model, tokenizer, "sst2", SST2_ROWS, mode="score", calibrate=True, n_bootstrap=0, progress=False)
    assert calibrated.calibrated and plain.predictions[0]["scores"] != calibrated.predictions[0]["scores"]
    with pytest.raises(ValueError, match="calibrate=True needs mode='score'"):
        evaluation.evaluate(model, tokenizer, "sst2", SST2_ROWS, mode="generate", calibrate=True, progress=False)


def test_record_is_judged_per_candidate_and_aggregated_per_query(model, tokenizer):
    rows = [EXAMPLES["record"], dict(EXAMPLES["record"], answers=["Mariam"])]
    result = evaluation.evaluate(model, tokenizer, "record", rows, mode="score", n_bootstrap=20, progress=False)
    assert result.n == 2
    chosen = [r["prediction"] for r in result.predictions]
    assert all(c in ("Afghanistan", "Mariam") for c in chosen)
    assert result.metrics["em"] == metrics.compute("record", chosen, [["Afghanistan"], ["Mariam"]])["em"]


def test_multirc_keeps_question_groups(model, tokenizer):
    base = EXAMPLES["multirc"]
    rows = [dict(base, answer=f"answer {a}", label=a % 2, idx={"paragraph": 0, "question": a // 2, "answer": a})
            for a in range(4)]
    result = evaluation.evaluate(model, tokenizer, "multirc", rows, mode="score", n_bootstrap=20, progress=False)
    preds = [r["prediction"] for r in result.predictions]
    expected = metrics.compute("multirc", preds, [r["label"] for r in rows], groups=[0, 0, 1, 1])
    assert result.metrics["em"] == expected["em"]


def test_a_batch_that_does_not_fit_names_a_smaller_batch(model, tokenizer, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model, "generate", out_of_memory)
    with pytest.raises(RuntimeError, match="batch_size=8 does not fit.*batch_size=4"):
        evaluation.generate_texts(model, tokenizer, ["a", "b"], batch_size=8, progress=False)


def test_bad_arguments_are_named(model, tokenizer):
    with pytest.raises(ValueError, match="mode 'rank'.*generate, score"):
        evaluation.evaluate(model, tokenizer, "sst2", SST2_ROWS, mode="rank")
    with pytest.raises(ValueError, match="no rows"):
        evaluation.evaluate(model, tokenizer, "sst2", [])
    with pytest.raises(ValueError, match="out of range"):
        evaluation.evaluate(model, tokenizer, "sst2", [{"sentence": "x", "label": 5}])
