"""Contextual calibration, piece by piece: the bias on content-free prompts and the division by it
reproduce what ``evaluate(calibrate=True)`` predicts (notebook 02 checks calibration this way)."""

import torch

from nlu_helpers import evaluation
from nlu_helpers.models import TINY_MODEL, load_model, load_tokenizer

ROWS = [
    {"sentence": "a gorgeous, witty, seductive movie.", "label": 1},
    {"sentence": "dull.", "label": 0},
    {"sentence": "one of the year's best films", "label": 1},
]


def test_calibrate_scores_divides_the_probabilities_by_the_bias():
    scores = torch.tensor([[-1.0, -2.0], [-3.0, -0.5]])  # [N=2, C=2] log-likelihoods
    bias = torch.tensor([0.8, 0.2])
    probabilities = torch.softmax(scores, -1) / bias
    assert torch.equal(evaluation.calibrate_scores(scores, bias).argmax(-1), probabilities.argmax(-1))
    torch.testing.assert_close(evaluation.calibrate_scores(scores, bias).exp(), probabilities)
    uniform = torch.full((2,), 0.5)
    assert torch.equal(evaluation.calibrate_scores(scores, uniform).argmax(-1), scores.argmax(-1))  # no bias: no change


def test_the_pieces_reproduce_evaluate_with_calibration():
    torch.manual_seed(0)
    model, tokenizer = load_model(TINY_MODEL, device="cpu"), load_tokenizer(TINY_MODEL)
    plain = evaluation.evaluate(model, tokenizer, "sst2", ROWS, mode="score", n_bootstrap=0, progress=False)
    calibrated = evaluation.evaluate(model, tokenizer, "sst2", ROWS, mode="score", calibrate=True, n_bootstrap=0, progress=False)
    content_free = evaluation.content_free_probabilities(model, tokenizer, "sst2", ROWS[0])
    assert content_free.shape == (len(evaluation.CONTENT_FREE), 2)
    torch.testing.assert_close(content_free.sum(-1), torch.ones(len(evaluation.CONTENT_FREE)))
    raw = torch.tensor([p["scores"] for p in plain.predictions])
    by_hand = evaluation.calibrate_scores(raw, content_free.mean(0))
    torch.testing.assert_close(by_hand, torch.tensor([p["scores"] for p in calibrated.predictions]), atol=1e-3, rtol=0)
    assert by_hand.argmax(-1).tolist() == [p["prediction"] for p in calibrated.predictions]
