"""Evaluation refuses a model with NaN weights instead of reporting a normal-looking accuracy.

Before: scoring argmaxed ``[nan, nan]`` to label 0 (accuracy = the share of label 0); generation
with a diverged adapter ran as if nothing were wrong."""

import pytest
import torch

from nlu_helpers import evaluation
from nlu_helpers.models import TINY_MODEL, add_lora, load_model, lora_config

ROWS = [
    {"sentence": "a gorgeous, witty, seductive movie.", "label": 1},
    {"sentence": "dull.", "label": 0},
    {"sentence": "flat, lifeless and far too long.", "label": 0},
]


def test_scoring_with_nan_weights_is_refused_naming_task_and_model(tokenizer):
    model = load_model(TINY_MODEL, device="cpu")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(evaluation.NonFiniteModel, match=r"model 'tiny-nan'.*weights are not finite"):  # trainable: checked first
        evaluation.evaluate(model, tokenizer, "sst2", ROWS, mode="score", model_name="tiny-nan", progress=False)
    model.requires_grad_(False)  # frozen base weights are not checked up front; the scores give them away
    with pytest.raises(evaluation.NonFiniteModel, match=r"task 'sst2', model 'tiny-nan'.*scores are not finite.*3 of 3"):
        evaluation.evaluate(model, tokenizer, "sst2", ROWS, mode="score", model_name="tiny-nan", progress=False)


@pytest.mark.parametrize("mode", ["generate", "score"])
def test_an_adapter_with_nan_weights_is_refused_before_evaluating(tokenizer, mode, monkeypatch):
    model = add_lora(load_model(TINY_MODEL, device="cpu"), lora_config(r=4))
    model.requires_grad_(False)  # as loaded for evaluation: nothing trainable, the LoRA tensors still checked
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("inf"))

    def never(*args, **kwargs):
        raise AssertionError("the model ran: the weights were not checked first")

    monkeypatch.setattr(evaluation, "generate_texts", never)
    monkeypatch.setattr(evaluation, "score_continuations", never)
    with pytest.raises(evaluation.NonFiniteModel, match=r"task 'sst2'.*weights are not finite.*lora_B"):
        evaluation.evaluate(model, tokenizer, "sst2", ROWS, mode=mode, model_name="tiny-lora", progress=False)


def test_finite_weights_pass(tokenizer):
    model = add_lora(load_model(TINY_MODEL, device="cpu"), lora_config(r=4))
    result = evaluation.evaluate(model, tokenizer, "sst2", ROWS, mode="score", n_bootstrap=10, progress=False)
    assert result.n == 3
