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
# PPO: rollouts, the reference pass and the update's mini-batches, with LoRA adapters
# ---------------------------------------------------------------------------------------

SMALL = ppo.preset("smoke", prompts_per_step=4, batch_size=2, gradient_accumulation_steps=2, ppo_epochs=2, max_new_tokens=(3, 5))


@pytest.fixture
def prefix_passes(monkeypatch):
    """Counts the shared-prefix passes PPO's forward runs (``answer_states``), with and without gradients."""
    counts = {"grad": 0, "no_grad": 0}
    original = prefix_cache.run_prefix

    def spy(model, *args, **kwargs):
        if "logits_to_keep" not in kwargs:  # not generation's pass (counted by `built`)
            counts["grad" if torch.is_grad_enabled() else "no_grad"] += 1
        return original(model, *args, **kwargs)

    monkeypatch.setattr(prefix_cache, "run_prefix", spy)
    return counts


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory):
    """An "SFT adapter" with non-zero weights, saved the way the SFT notebook saves one: PPO's reference is then it, frozen."""
    folder = tmp_path_factory.mktemp("sft") / "adapter"
    sft = models.add_lora(models.load_model(models.TINY_MODEL, device="cpu"), models.lora_config())
    _randomise(sft, seed=2)
    sft.save_pretrained(folder)
    return folder


def _randomise(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a fresh LoRA is a no-op: make the adapter matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return gen


def _trainer(rows, use_cache: bool, sft_adapter=None, **overrides):
    config = dataclasses.replace(SMALL, prefix_cache=use_cache, **overrides)  # PPOConfig's switch
    trainer = ppo.PPOTrainer(models.TINY_MODEL, "movie-snippets", rows, config, device="cpu", sft_adapter=sft_adapter)
    gen = _randomise(trainer.policy, seed=1)
    with torch.no_grad():
        trainer.ac.value_head.linear.weight.normal_(generator=gen)  # a zero head would hide a misaligned state
    return trainer


def _ppo_step(rows, use_cache: bool, sft_adapter=None, **overrides):
    trainer = _trainer(rows, use_cache, sft_adapter, **overrides)
    log = trainer.step(rows[:4], max_new_tokens=5)
    weights = {n: p.detach().clone() for n, p in trainer.ac.named_parameters() if p.requires_grad}
    return trainer.last_step, log, weights


def _assert_same_step(cached, plain, atol):
    (cached_step, cached_log, cached_weights), (plain_step, plain_log, plain_weights) = cached, plain
    assert torch.equal(cached_step.response_ids, plain_step.response_ids) and cached_step.texts == plain_step.texts
    for name in ("logprobs", "ref_logprobs", "values", "advantages", "returns"):
        torch.testing.assert_close(getattr(cached_step, name), getattr(plain_step, name), atol=atol, rtol=0, msg=name)
    for key in ("policy_loss", "value_loss", "approx_kl", "ratio", "kl"):  # the losses average both epochs' mini-batches
        assert abs(cached_log[key] - plain_log[key]) <= atol, (key, cached_log[key], plain_log[key])
    for name, w in plain_weights.items():  # the update's gradients came through the one prefix pass
        torch.testing.assert_close(cached_weights[name], w, atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("reference", ["adapter-off", "sft-adapter"])
def test_ppo_step_equals_with_and_without(built, prefix_passes, sft_adapter, reference):
    """Rollout, reference pass and two epochs of updates: the same numbers to 1e-5 either way, the second
    epoch's losses taken after an optimizer step whose gradients flowed through the shared prefix."""
    rows = list(data.load_split("movie-snippets", "train", limit=8))
    adapter = sft_adapter if reference == "sft-adapter" else None
    plain = _ppo_step(rows, use_cache=False, sft_adapter=adapter)
    assert built["used"] == 0 and prefix_passes == {"grad": 0, "no_grad": 0}
    cached = _ppo_step(rows, use_cache=True, sft_adapter=adapter)
    assert built["used"] == 1  # the rollout
    # the reference: 4 answers in chunks of 2; the update: 2 epochs x 2 mini-batches of 2
    assert prefix_passes == {"no_grad": 2, "grad": 4}
    _assert_same_step(cached, plain, atol=1e-5)


def test_gradients_flow_through_the_shared_prefix_once(prefix_passes):
    """One forward/backward of the actor-critic over a padded batch: values, log-probs and every trainable
    parameter's gradient equal the plain pass's (relative 1e-5), with one prefix pass for all rows."""
    rows = list(data.load_split("movie-snippets", "train", limit=8))
    trainer = _trainer(rows, use_cache=True)
    out = generation.generate(trainer.policy, trainer.tokenizer, [trainer.task.build_prompt(r) for r in rows[:4]],
                              max_new_tokens=6, seeds=[1, 2, 3, 4], temperature=1.5)
    ids, attn, width = generation.trim_padding(out.input_ids, out.attention_mask, out.response_mask)
    mask = out.response_mask[:, :width]  # [B, w]
    results = {}
    for share in (False, True):
        trainer.ac.zero_grad()
        logprobs, _, values = trainer.ac(ids, attn, width, 0.7, prefix_cache=share)  # [B, w] each
        ((logprobs * mask).sum() + (values * mask).sum()).backward()
        grads = {n: p.grad.clone() for n, p in trainer.ac.named_parameters() if p.grad is not None}
        results[share] = (logprobs * mask, values * mask, grads)
    assert prefix_passes == {"grad": 1, "no_grad": 0}
    (lp, v, grads), (lp_plain, v_plain, grads_plain) = results[True], results[False]
    torch.testing.assert_close(lp, lp_plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(v, v_plain, atol=1e-5, rtol=0)
    assert grads.keys() == grads_plain.keys() and any("lora_" in n for n in grads)
    for name, g in grads_plain.items():
        torch.testing.assert_close(grads[name], g, atol=1e-5 * max(float(g.abs().max()), 1.0), rtol=0, msg=name)


def test_answer_states_layout_on_uneven_prompts(model):
    """Prompts of different lengths after a shared part, answers of different lengths: the states before
    each answer token equal the plain pass's; a batch that is not left-padded prompts falls back."""
    decoder = model.get_decoder()
    shared, pad = list(range(200, 220)), 0
    prompts, answers = [shared + [5, 6, 7], shared + [8], shared + [9, 10]], [[11, 12, 13], [14], [15, 16]]
    width_p, width_r = max(map(len, prompts)), 3
    ids = torch.full((3, width_p + width_r), pad)
    attn = torch.zeros_like(ids)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        ids[i, width_p - len(p): width_p], attn[i, width_p - len(p): width_p] = torch.tensor(p), 1
        ids[i, width_p: width_p + len(a)], attn[i, width_p: width_p + len(a)] = torch.tensor(a), 1
    with torch.no_grad():
        plain = prefix_cache.answer_states(decoder, ids, attn, width_r, share=False)  # [3, 3, H]
        cached = prefix_cache.answer_states(decoder, ids, attn, width_r)
    answer_mask = attn[:, width_p:, None].bool()
    torch.testing.assert_close(cached.masked_fill(~answer_mask, 0), plain.masked_fill(~answer_mask, 0), atol=1e-5, rtol=0)
    lengths, found = prefix_cache._shared_prompt_prefix(ids, attn, width_p)
    assert found == 20 and lengths.tolist() == [23, 21, 22]
    right_padded = attn.clone()
    right_padded[1, width_p - 2], right_padded[1, width_p - 1] = 1, 0  # a hole before the answer
    assert prefix_cache._shared_prompt_prefix(ids, right_padded, width_p) is None


def test_ppo_falls_back_where_the_cache_cannot_be_shared(built, prefix_passes, monkeypatch):
    """A model whose cache is not a plain key/value cache: the step is the plain step, bit for bit, and PPO's
    forward tries the prefix pass once, not once per mini-batch."""
    rows = list(data.load_split("movie-snippets", "train", limit=8))
    plain = _ppo_step(rows, use_cache=False)
    monkeypatch.setattr(prefix_cache, "cache_is_shareable", lambda cache: False)
    fallback = _ppo_step(rows, use_cache=True)
    assert built == {"used": 0, "declined": 1}  # the rollout
    assert prefix_passes == {"no_grad": 1, "grad": 0}  # the first reference chunk; then the decoder is known unshareable
    _assert_same_step(fallback, plain, atol=0)


def test_ppo_update_with_dropout_runs_the_plain_pass(prefix_passes):
    """With dropout on during the update each row needs its own dropout mask over the prefix: no sharing there."""
    rows = list(data.load_split("movie-snippets", "train", limit=8))
    trainer = _trainer(rows, use_cache=True, disable_dropout=False, ppo_epochs=1)
    trainer.step(rows[:4], max_new_tokens=5)
    assert prefix_passes == {"no_grad": 2, "grad": 0}


# ---------------------------------------------------------------------------------------
# The static cache: fixed-size decoding (compiled on a GPU) gives the same answers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zero-shot", "few-shot"])
@pytest.mark.parametrize("share", [False, True], ids=["plain", "prefix"])
@pytest.mark.parametrize("sampling", [{}, {"seeds": [11, 12, 13, 14, 15, 16], "temperature": 1.0}], ids=["greedy", "seeded"])
def test_static_cache_decodes_what_the_growing_cache_decodes(model, tokenizer, prompts, built, kind, share, sampling):
    grown = generation.generate(model, tokenizer, prompts[kind], max_new_tokens=12, prefix_cache=share, keep_states=True, **sampling)
    fixed = generation.generate(model, tokenizer, prompts[kind], max_new_tokens=12, prefix_cache=share, keep_states=True,
                                static_cache=True, **sampling)
    assert built["used"] == (2 if share else 0)  # the shared prefix went into the static cache too
    assert torch.equal(fixed.input_ids, grown.input_ids) and fixed.texts == grown.texts
    assert torch.equal(fixed.response_mask, grown.response_mask)
    # the states come from one forward pass instead of the LM head's hook: the same up to summation order
    torch.testing.assert_close(fixed.states, grown.states, atol=1e-5, rtol=0)


def test_static_cache_length_is_bucketed_and_never_shrinks(model):
    fresh = torch.nn.Linear(1, 1)  # any module: lengths are remembered per model
    fresh.config = model.config
    assert prefix_cache.static_cache(fresh, None, 2, 130, bucket=64).get_max_length() == 192
    assert prefix_cache.static_cache(fresh, None, 2, 10, bucket=64).get_max_length() == 192  # the compiled shape is kept
    rows = [list(range(100, 120)) + [1, 2], list(range(100, 120)) + [3]]
    layout = prefix_cache.build(model, generation_tokenizer(), rows)
    cache = prefix_cache.static_cache(model, layout.cache, 2, 30)
    assert cache.get_seq_length() == 20  # the prefix sits at 0..19 for both rows
    key = cache.layers[0].keys  # [rows, kv heads, length, head dim]
    torch.testing.assert_close(key[:, :, :20], layout.cache.layers[0].keys)
    assert key.shape[2] % prefix_cache.STATIC_CACHE_BUCKET == 0 and not key[:, :, 20:].any()


def test_a_static_cache_is_reused_in_place_while_its_shape_holds(model, tokenizer, prompts):
    """The second batch of the same rows and width decodes into the same tensors (a CUDA graph's addresses),
    zeroed first: its answers are what a fresh cache gives."""
    first = generation.generate(model, tokenizer, prompts["few-shot"], max_new_tokens=6, static_cache=True)
    cache = prefix_cache._STATIC_CACHES[model]
    address = cache.layers[0].keys.data_ptr()
    again = generation.generate(model, tokenizer, prompts["few-shot"], max_new_tokens=6, static_cache=True)
    assert prefix_cache._STATIC_CACHES[model] is cache and cache.layers[0].keys.data_ptr() == address
    assert torch.equal(again.input_ids, first.input_ids)
    fewer = generation.generate(model, tokenizer, prompts["few-shot"][:3], max_new_tokens=6, static_cache=True)
    assert prefix_cache._STATIC_CACHES[model] is not cache  # 3 rows: a new cache (and, on a GPU, a new graph)
    assert torch.equal(fewer.input_ids, generation.generate(model, tokenizer, prompts["few-shot"][:3], max_new_tokens=6).input_ids)


def test_a_prefix_does_not_go_into_a_static_cache_with_sliding_layers(model, monkeypatch):
    from transformers.cache_utils import StaticCache, StaticSlidingWindowLayer

    rows = [list(range(100, 120)) + [1, 2], list(range(100, 120)) + [3]]
    layout = prefix_cache.build(model, generation_tokenizer(), rows)
    original = StaticCache.__init__

    def sliding(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.layers[0] = StaticSlidingWindowLayer(max_cache_len=self.layers[0].max_cache_len, sliding_window=8)

    monkeypatch.setattr(StaticCache, "__init__", sliding)
    assert prefix_cache.static_cache(model, layout.cache, 2, 30) is None
    assert prefix_cache.static_cache(model, None, 2, 30) is not None  # the plain batch still decodes into it


def generation_tokenizer():
    return models.load_tokenizer(models.TINY_MODEL)


def test_ppo_step_with_a_static_cache_equals_without(built):
    """PPOConfig.static_cache: the same samples, and log-probs, values and losses within 1e-5 (the sampling
    policy's states come from a forward pass instead of generation's own)."""
    rows = list(data.load_split("movie-snippets", "train", limit=8))
    grown = _ppo_step(rows, use_cache=True)
    fixed = _ppo_step(rows, use_cache=True, static_cache=True)
    _assert_same_step(fixed, grown, atol=1e-5)
