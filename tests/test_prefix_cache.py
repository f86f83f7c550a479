"""The prefix cache: the batch's shared prompt prefix computed once gives what the plain batch gives.

On the tiny model: generated token ids and texts identical (greedy, seeded sampling, keep_states),
scores within 1e-5, PPO's rollout tensors and losses within 1e-5, and a clean fallback where the
batch shares too little or the model's cache cannot be shared.
"""

import dataclasses

import pytest
import torch

from nlu_helpers import data, evaluation, generation, models, ppo, prefix_cache
from nlu_helpers.tasks import get_task

SENTENCES = [
    "a gorgeous, witty, seductive movie.",
    "dull.",
    "the plot is nothing but boilerplate clichés from start to finish, and the script is awful.",
    "one of the year's best films, moving and funny in equal measure",
    "it is what it is.",
    "an hour too long and not one scene earns it",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's: the tiny model's kernels gain nothing from threads


@pytest.fixture(scope="module")
def prompts():
    task = get_task("sst2")
    shots = [{"sentence": "a masterpiece.", "label": 1}, {"sentence": "awful, just awful.", "label": 0}]
    return {
        "zero-shot": [task.build_prompt({"sentence": s, "label": 0}) for s in SENTENCES],
        "few-shot": [task.build_prompt({"sentence": s, "label": 0}, shots) for s in SENTENCES],
    }


@pytest.fixture
def built(monkeypatch):
    """Counts the batches the prefix cache served (``build`` returned a layout) and those it declined."""
    counts = {"used": 0, "declined": 0}
    original = prefix_cache.build

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        counts["used" if out is not None else "declined"] += 1
        return out

    monkeypatch.setattr(prefix_cache, "build", spy)
    return counts


def test_shared_length_leaves_every_row_a_token_of_its_own():
    assert prefix_cache.shared_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert prefix_cache.shared_length([[1, 2, 3], [1, 2, 3]]) == 2  # identical prompts: the last token runs with the batch
    assert prefix_cache.shared_length([[7, 1], [8, 1]]) == 0
    assert prefix_cache.shared_length([[5]]) == 0


def test_layout_puts_padding_after_the_shared_part_with_todays_positions(model, tokenizer):
    rows = [list(range(100, 120)) + [1, 2, 3], list(range(100, 120)) + [4]]
    batch = prefix_cache.build(model, tokenizer, rows)
    assert batch is not None and batch.shared == 20
    assert batch.input_ids.shape == (2, 23) and batch.cache.get_seq_length() == 20
    assert batch.attention_mask[1].tolist() == [1] * 20 + [0, 0, 1]
    assert batch.position_ids[0].tolist() == list(range(23))
    assert batch.position_ids[1, -1].item() == 20  # the row's own token sits where it sits unpadded
    assert batch.input_ids[1, -1].item() == 4 and batch.input_ids[1, 20].item() == tokenizer.pad_token_id


@pytest.mark.parametrize("kind", ["zero-shot", "few-shot"])
@pytest.mark.parametrize("sampling", [{}, {"seeds": [11, 12, 13, 14, 15, 16], "temperature": 1.0}],
                         ids=["greedy", "seeded"])
def test_generation_with_the_cache_equals_without(model, tokenizer, prompts, built, kind, sampling):
    plain = generation.generate(model, tokenizer, prompts[kind], max_new_tokens=12, prefix_cache=False, **sampling)
    assert built["used"] == 0
    cached = generation.generate(model, tokenizer, prompts[kind], max_new_tokens=12, prefix_cache=True, **sampling)
    assert built["used"] == 1
    assert torch.equal(cached.input_ids, plain.input_ids)  # same token ids, same plain left-padded layout
    assert torch.equal(cached.attention_mask, plain.attention_mask)
    assert torch.equal(cached.response_mask, plain.response_mask)
    assert cached.texts == plain.texts


def test_states_for_answer_tokens_are_unchanged(model, tokenizer, prompts, built):
    seeds = generation.sample_seeds(0, 1, range(len(SENTENCES)))
    plain = generation.generate(model, tokenizer, prompts["few-shot"], max_new_tokens=8, seeds=seeds, keep_states=True,
                                prefix_cache=False)
    cached = generation.generate(model, tokenizer, prompts["few-shot"], max_new_tokens=8, seeds=seeds, keep_states=True)
    assert built["used"] == 1
    assert torch.equal(cached.input_ids, plain.input_ids)
    assert cached.states.shape == plain.states.shape
    torch.testing.assert_close(cached.states, plain.states, atol=1e-5, rtol=0)


@pytest.mark.parametrize("continuations", [[" Negative", " Positive"], [" not good at all", " good"]],
                         ids=["one-token", "several-tokens"])
def test_scores_with_the_cache_equal_without(model, tokenizer, prompts, built, continuations):
    for kind in ("zero-shot", "few-shot"):
        plain = evaluation.score_continuations(model, tokenizer, prompts[kind], continuations, batch_size=4,
                                               progress=False, prefix_cache=False)
        cached = evaluation.score_continuations(model, tokenizer, prompts[kind], continuations, batch_size=4, progress=False)
        torch.testing.assert_close(cached, plain, atol=1e-5, rtol=0)
    assert built["used"] == 4  # two batches of each kind


def test_evaluate_predictions_equal_with_and_without(model, tokenizer, built):
    rows = [{"sentence": s, "label": i % 2} for i, s in enumerate(SENTENCES)]
    for mode in ("generate", "score"):
        on = evaluation.evaluate(model, tokenizer, "sst2", rows, mode=mode, batch_size=3, n_bootstrap=0, progress=False)
        off = evaluation.evaluate(model, tokenizer, "sst2", rows, mode=mode, batch_size=3, n_bootstrap=0, progress=False,
                                  prefix_cache=False)
        assert [p["prediction"] for p in on.predictions] == [p["prediction"] for p in off.predictions]
        assert on.metrics == off.metrics
    assert built["used"] == 4 and built["declined"] == 0


def test_falls_back_on_a_batch_with_no_shared_prefix(model, tokenizer, built):
    prompts = ["The weather today is", "Seven plus five equals"]  # share nothing
    plain = generation.generate(model, tokenizer, prompts, max_new_tokens=5, prefix_cache=False)
    cached = generation.generate(model, tokenizer, prompts, max_new_tokens=5)
    assert built == {"used": 0, "declined": 1}
    assert torch.equal(cached.input_ids, plain.input_ids) and cached.texts == plain.texts
    scores = evaluation.score_continuations(model, tokenizer, prompts, [" yes", " no"], progress=False)
    assert built["declined"] == 2 and torch.isfinite(scores).all()


def test_falls_back_when_the_cache_cannot_be_shared(model, tokenizer, prompts, monkeypatch):
    """A model whose cache is not a plain key/value cache (sliding window, recurrent state) runs the plain batch."""
    monkeypatch.setattr(prefix_cache, "cache_is_shareable", lambda cache: False)
    rows = [tokenizer(p)["input_ids"] for p in prompts["few-shot"]]
    assert prefix_cache.build(model, tokenizer, rows) is None
    plain = generation.generate(model, tokenizer, prompts["few-shot"][:2], max_new_tokens=4, prefix_cache=False)
    fallback = generation.generate(model, tokenizer, prompts["few-shot"][:2], max_new_tokens=4)
    assert torch.equal(fallback.input_ids, plain.input_ids)


def test_a_sliding_window_cache_is_not_shared():
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    plain = DynamicCache()
    plain.layers = [DynamicLayer(), DynamicLayer()]
    windowed = DynamicCache()
    windowed.layers = [DynamicLayer(), DynamicSlidingWindowLayer(sliding_window=8)]
    assert prefix_cache.cache_is_shareable(plain)
    assert not prefix_cache.cache_is_shareable(windowed) and not prefix_cache.cache_is_shareable(None)


# ---------------------------------------------------------------------------------------
# PPO: rollouts through generation.generate with LoRA adapters
# ---------------------------------------------------------------------------------------

SMALL = ppo.preset("smoke", prompts_per_step=4, batch_size=2, gradient_accumulation_steps=2, ppo_epochs=1, max_new_tokens=(3, 5))


def _ppo_step(rows, use_cache: bool):
    config = dataclasses.replace(SMALL, prefix_cache=use_cache)  # PPOConfig's switch
    trainer = ppo.PPOTrainer(models.TINY_MODEL, "movie-snippets", rows, config, device="cpu")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a fresh LoRA is a no-op: make the adapter matter
        for name, p in trainer.policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        trainer.ac.value_head.linear.weight.normal_(generator=gen)
    log = trainer.step(rows[:4], max_new_tokens=5)
    return trainer.last_step, log


def test_ppo_rollout_and_losses_equal_with_and_without(built):
    rows = list(data.load_split("movie-snippets", "train", limit=8))
    plain, plain_log = _ppo_step(rows, use_cache=False)
    assert built["used"] == 0
    cached, cached_log = _ppo_step(rows, use_cache=True)
    assert built["used"] == 1
    assert torch.equal(cached.response_ids, plain.response_ids) and cached.texts == plain.texts
    for name in ("logprobs", "ref_logprobs", "values"):
        torch.testing.assert_close(getattr(cached, name), getattr(plain, name), atol=1e-5, rtol=0, msg=name)
    losses = [k for k in plain_log if "loss" in k]
    assert losses
    for key in losses:
        assert abs(cached_log[key] - plain_log[key]) < 1e-5, (key, cached_log[key], plain_log[key])
