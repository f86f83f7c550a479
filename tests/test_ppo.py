"""PPO: the math against hand-computed numbers and plain loops, and the loop on the tiny model.

Everything runs on CPU with ``tiny-random`` in seconds: the model's answers are nonsense,
but every code path (sampling, reference, GAE, update, checkpoints) is the real one.
"""

import math
import random

import pytest
import torch

from nlu_helpers import data, models, policy, ppo

TASK = "movie-snippets"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's kernels are too small to gain from threads; on a shared CPU extra
    threads only spin (a step takes 0.5 s with one thread, up to 8 s with two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------
# The math
# ---------------------------------------------------------------------------------------


def test_gae_hand_computed():
    # one answer of three tokens; score 1 on the last; gamma 0.9, lambda 0.5
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    mask = torch.ones(1, 3)
    advantages, returns = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # deltas: t2 = 1 - 0.1 = 0.9; t1 = 0.9 * 0.1 - 0.2 = -0.11; t0 = 0.9 * 0.2 - 0.5 = -0.32
    # A2 = 0.9; A1 = -0.11 + 0.45 * 0.9 = 0.295; A0 = -0.32 + 0.45 * 0.295 = -0.18725
    torch.testing.assert_close(advantages, torch.tensor([[-0.18725, 0.295, 0.9]]))
    torch.testing.assert_close(returns, torch.tensor([[0.31275, 0.495, 1.0]]))
    # the paper's gamma 1, lambda 1: every advantage is the reward-to-go minus the value
    advantages, _ = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[0.5, 0.8, 0.9]]))


def _gae_loop(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """The textbook recursion on one unpadded answer, in plain Python."""
    advantages = [0.0] * len(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages


@pytest.mark.parametrize("seed", range(5))
def test_gae_matches_a_plain_python_loop_on_random_padded_batches(seed):
    gen = torch.Generator().manual_seed(seed)
    batch, tokens = 6, 9
    rewards = torch.randn(batch, tokens, generator=gen, dtype=torch.float64)
    values = torch.randn(batch, tokens, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, tokens + 1, (batch,), generator=gen)
    mask = (torch.arange(tokens)[None, :] < lengths[:, None]).double()  # right padding
    gamma, lam = [(1.0, 0.95), (0.99, 0.9), (0.5, 0.0)][seed % 3]
    advantages, returns = ppo.gae(rewards, values, mask, gamma, lam)
    for i in range(batch):
        n = int(lengths[i])
        expected = _gae_loop(rewards[i, :n].tolist(), values[i, :n].tolist(), gamma, lam)
        torch.testing.assert_close(advantages[i, :n], torch.tensor(expected, dtype=torch.float64))
        torch.testing.assert_close(returns[i, :n], advantages[i, :n] + values[i, :n])
        assert advantages[i, n:].abs().sum() == 0 and returns[i, n:].abs().sum() == 0


def test_padding_never_changes_the_advantages_of_real_tokens():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 5, generator=gen)
    values = torch.randn(3, 5, generator=gen)
    clean_adv, clean_ret = ppo.gae(rewards, values, torch.ones(3, 5))
    # the same answers with padding on the left, inside and on the right, full of garbage
    padded_rewards = torch.full((3, 9), 1e6)
    padded_values = torch.full((3, 9), -1e6)
    mask = torch.zeros(3, 9)
    real = [1, 2, 4, 5, 7]  # columns 0, 3, 6, 8 are padding
    padded_rewards[:, real], padded_values[:, real], mask[:, real] = rewards, values, 1.0
    adv, ret = ppo.gae(padded_rewards, padded_values, mask)
    torch.testing.assert_close(adv[:, real], clean_adv)
    torch.testing.assert_close(ret[:, real], clean_ret)
    assert adv[mask == 0].abs().sum() == 0 and ret[mask == 0].abs().sum() == 0
    # whitening ignores padding too
    white = ppo.whiten(adv, mask)
    torch.testing.assert_close(white[:, real], ppo.whiten(clean_adv, torch.ones(3, 5)))
    assert white[mask == 0].abs().sum() == 0
    assert abs(float(ppo.masked_mean(white, mask))) < 1e-6
    assert abs(float(ppo.masked_var(white, mask)) - 1.0) < 1e-4


def test_gae_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[batch, tokens\].*\(2, 3\).*\(2, 4\)"):
        ppo.gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))


def _policy_case(ratio: float, advantage: float, clip: float = 0.2):
    old = torch.zeros(1, 1)
    new = torch.full((1, 1), math.log(ratio), requires_grad=True)
    loss, clip_frac, approx_kl = ppo.policy_loss(new, old, torch.full((1, 1), advantage), torch.ones(1, 1), clip)
    loss.backward()
    return float(loss.detach()), float(new.grad), float(clip_frac), float(approx_kl)


@pytest.mark.parametrize(
    "ratio, advantage, loss, pulls, clipped",
    [
        (1.1, 1.0, -1.1, True, False),  # inside the trust region: plain surrogate
        (1.19, 1.0, -1.19, True, False),  # just inside 1 + c
        (1.21, 1.0, -1.2, False, True),  # just past 1 + c with A > 0: capped, no more push
        (1.5, 1.0, -1.2, False, True),
        (0.5, 1.0, -0.5, True, False),  # below 1 - c with A > 0: the pessimistic term is unclipped
        (0.81, -1.0, 0.81, True, False),  # just inside 1 - c with A < 0
        (0.79, -1.0, 0.8, False, True),  # just past 1 - c with A < 0: capped
        (1.5, -1.0, 1.5, True, False),  # above 1 + c with A < 0: unclipped, keeps pulling back
    ],
)
def test_clipped_policy_loss_at_its_edges(ratio, advantage, loss, pulls, clipped):
    value, grad, clip_frac, approx_kl = _policy_case(ratio, advantage)
    assert value == pytest.approx(loss, abs=1e-6)
    assert (abs(grad) > 1e-8) == pulls
    if pulls:  # d(-A * r)/d log r = -A * r
        assert grad == pytest.approx(-advantage * ratio, rel=1e-5)
    assert clip_frac == (1.0 if clipped else 0.0)
    assert approx_kl == pytest.approx((ratio - 1) - math.log(ratio), abs=1e-6)


@pytest.mark.parametrize(
    "new, loss, pulls, clipped",
    [
        (0.1, 0.5 * 0.9**2, True, False),  # moved less than c toward the return
        (0.19, 0.5 * 0.81**2, True, False),  # just inside
        (0.5, 0.5 * 0.8**2, False, True),  # past c toward the return: judged at old + c, no gradient
        (-0.5, 0.5 * 1.5**2, True, False),  # moved away from the return: the larger, unclipped error counts
    ],
)
def test_clipped_value_loss_at_its_edges(new, loss, pulls, clipped):
    values = torch.full((1, 1), new, requires_grad=True)
    value, clip_frac = ppo.value_loss(values, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    value.backward()
    assert float(value.detach()) == pytest.approx(loss, abs=1e-6)
    assert (abs(float(values.grad)) > 1e-8) == pulls
    assert float(clip_frac) == (1.0 if clipped else 0.0)


def test_kl_estimators_and_token_rewards():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0]])
    k1 = ppo.kl_per_token(logprobs, ref, "k1")
    torch.testing.assert_close(k1, torch.tensor([[0.5, -1.0, 0.0, 0.0]]))
    k3 = ppo.kl_per_token(logprobs, ref, "k3")
    expected = torch.tensor([[math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0, 0.0, 0.0]])
    torch.testing.assert_close(k3, expected)
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match="'k2'.*k1, k3"):
        ppo.kl_per_token(logprobs, ref, "k2")
    # the score lands on the last real token; every real token pays the KL penalty
    mask = torch.tensor([[1, 1, 1, 0]])
    rewards = ppo.token_rewards(torch.tensor([-3.0]), k1 * mask, mask, kl_coef=0.2)
    torch.testing.assert_close(rewards, torch.tensor([[-0.1, 0.2, -3.0, 0.0]]))


def test_kl_controllers():
    adaptive = ppo.AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    adaptive.update(6.0, 16)  # on target: unchanged
    assert adaptive.value == pytest.approx(0.2)
    adaptive.update(6.6, 16)  # 10% over: grows by 0.1 * 16 / 10000
    assert adaptive.value == pytest.approx(0.2 * (1 + 0.1 * 16 / 10_000))
    adaptive = ppo.AdaptiveKLController(0.2, 6.0, 10_000)
    adaptive.update(60.0, 16)  # the error is clipped to +0.2
    assert adaptive.value == pytest.approx(0.2 * (1 + 0.2 * 16 / 10_000))
    adaptive.update(0.0, 10_000)  # clipped to -0.2, one horizon of sequences
    assert adaptive.value == pytest.approx(0.2 * (1 + 0.2 * 16 / 10_000) * 0.8)
    fixed = ppo.make_kl_controller(ppo.preset("paper", adaptive_kl=False))
    fixed.update(100.0, 16)
    assert isinstance(fixed, ppo.FixedKLController) and fixed.value == 0.2
    assert isinstance(ppo.make_kl_controller(ppo.PAPER), ppo.AdaptiveKLController)


def test_config_errors_name_the_bad_value_and_the_allowed_ones():
    with pytest.raises(ValueError, match="'k2'.*allowed: k1, k3"):
        ppo.PPOConfig(kl_estimator="k2")
    with pytest.raises(ValueError, match="'sgd'.*allowed: adafactor, adamw"):
        ppo.PPOConfig(optimizer="sgd")
    with pytest.raises(ValueError, match=r"prompts_per_step=10 .*\(8 \* 2\)"):
        ppo.PPOConfig(prompts_per_step=10)
    with pytest.raises(ValueError, match=r"max_new_tokens.*\(31, 12\)"):
        ppo.PPOConfig(max_new_tokens=(31, 12))
    with pytest.raises(ValueError, match="unknown PPO preset 'fast'.*paper, cpu-demo, smoke"):
        ppo.preset("fast")
    with pytest.raises(ValueError, match="unknown PPOConfig field 'lr'; allowed: prompts_per_step"):
        ppo.preset("paper", lr=1e-3)
    with pytest.raises(ValueError, match="unknown PPOConfig field 'lerning_rate'; did you mean learning_rate"):
        ppo.preset("paper", lerning_rate=1e-3)
    with pytest.raises(ValueError, match="'grad_accum' is now called 'gradient_accumulation_steps'"):
        ppo.PPOConfig.from_dict({"grad_accum": 2})
    with pytest.raises(ValueError, match=r"learning_rate=inf .*finite number > 0"):
        ppo.PPOConfig(learning_rate=float("inf"))
    assert ppo.preset("cpu_demo") == ppo.CPU_DEMO
    assert ppo.PPOConfig.from_dict(ppo.CPU_DEMO.to_dict()) == ppo.CPU_DEMO
    # the paper's numbers
    paper = ppo.PAPER
    assert (paper.learning_rate, paper.optimizer, paper.prompts_per_step, paper.batch_size, paper.gradient_accumulation_steps) == (9e-6, "adafactor", 16, 8, 2)
    assert (paper.ppo_epochs, paper.clip_range, paper.clip_range_value, paper.vf_coef, paper.gamma, paper.lam) == (4, 0.2, 0.2, 0.1, 1.0, 0.95)
    assert (paper.kl_coef, paper.kl_target, paper.kl_horizon, paper.max_new_tokens, paper.lora_bias) == (0.2, 6.0, 10_000, (12, 31), "none")


# ---------------------------------------------------------------------------------------
# The loop on the tiny model
# ---------------------------------------------------------------------------------------

SMALL = ppo.preset("smoke", prompts_per_step=4, batch_size=2, gradient_accumulation_steps=2, ppo_epochs=1, max_new_tokens=(3, 5))


@pytest.fixture(scope="module")
def rows():
    return list(data.load_split(TASK, "train", limit=12))


def _trainer(rows, config=SMALL, **kwargs):
    return ppo.PPOTrainer(models.TINY_MODEL, TASK, rows, config, device="cpu", **kwargs)


def _plain_logprobs(model, trainer, step, temperature):
    """Log-probs of each answer computed row by row, unpadded, with the plain HF forward."""
    out = []
    for i, row in enumerate(step.rows):
        n = int(step.response_mask[i].sum())
        prompt = trainer.tokenizer(trainer.task.build_prompt(row), return_tensors="pt")["input_ids"]
        ids = torch.cat([prompt, step.response_ids[i:i + 1, :n]], dim=1)  # prompt + answer, no padding
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -n - 1: -1].float() / temperature
        out.append(torch.log_softmax(logits, -1).gather(-1, ids[0, -n:, None]).squeeze(-1))
    return out


def _look(trainer, rows, max_new_tokens):
    """One rollout without an update: the tensors the step would learn from."""
    trainer.step(rows, max_new_tokens=max_new_tokens, learn=False)
    return trainer.last_step


def _randomise_lora(policy, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def test_reference_is_the_adapter_free_model_and_batching_changes_nothing(rows):
    trainer = _trainer(rows)
    _randomise_lora(trainer.policy)  # a fresh LoRA is a no-op; make it matter
    step = _look(trainer, rows[:4], 4)
    base = models.load_model(models.TINY_MODEL, device="cpu")
    plain_ref = _plain_logprobs(base, trainer, step, SMALL.temperature)
    plain_policy = _plain_logprobs(trainer.policy, trainer, step, SMALL.temperature)
    for i, (ref, pol) in enumerate(zip(plain_ref, plain_policy)):
        n = len(ref)
        torch.testing.assert_close(step.ref_logprobs[i, :n], ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(step.logprobs[i, :n], pol, atol=1e-4, rtol=1e-4)  # padded batch == one by one
        assert (step.ref_logprobs[i, :n] - pol).abs().max() > 1e-3  # the adapter does change the policy
    assert step.response_mask.sum(1).max() <= 4
    assert all(isinstance(t, str) for t in step.texts)
    assert trainer.step_count == 0 and not trainer.history  # looking changed nothing


def test_reference_is_the_frozen_sft_policy(rows, tmp_path):
    # an "SFT adapter" with non-zero weights, saved the way the SFT notebook saves one
    base = models.load_model(models.TINY_MODEL, device="cpu")
    sft = models.add_lora(base, models.lora_config())
    _randomise_lora(sft, seed=2)
    sft.save_pretrained(tmp_path / "sft")
    sft_model = models.load_model(models.TINY_MODEL, device="cpu", adapter=tmp_path / "sft")

    trainer = _trainer(rows, ppo.preset("smoke", prompts_per_step=4, batch_size=2, gradient_accumulation_steps=2, ppo_epochs=1,
                                        max_new_tokens=(3, 5), learning_rate=1e-2), sft_adapter=tmp_path / "sft")
    step = _look(trainer, rows[:4], 4)
    for i, ref in enumerate(_plain_logprobs(sft_model, trainer, step, SMALL.temperature)):
        torch.testing.assert_close(step.ref_logprobs[i, : len(ref)], ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(step.logprobs[i, : len(ref)], ref, atol=1e-4, rtol=1e-4)  # PPO starts at SFT
    trainer.step()
    after = _look(trainer, rows[:4], 4)
    plain_sft = _plain_logprobs(sft_model, trainer, after, SMALL.temperature)
    plain_policy = _plain_logprobs(trainer.policy, trainer, after, SMALL.temperature)
    moved = 0.0
    for i, (ref, pol) in enumerate(zip(plain_sft, plain_policy)):
        torch.testing.assert_close(after.ref_logprobs[i, : len(ref)], ref, atol=1e-4, rtol=1e-4)  # reference frozen
        moved = max(moved, float((pol - ref).abs().max()))
    assert moved > 1e-4  # while the policy moved
    assert trainer.policy.active_adapter == policy.POLICY_ADAPTER
    assert not any(p.requires_grad for n, p in trainer.policy.named_parameters() if policy.REFERENCE_ADAPTER in n)


def _snapshot(trainer):
    lora = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if "lora_" in n}
    base = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if "lora_" not in n}
    head = {n: p.detach().clone() for n, p in trainer.ac.value_head.named_parameters()}
    return lora, base, head


def test_ppo_steps_train_the_adapter_and_value_head_not_the_base(rows, tmp_path):
    trainer = _trainer(rows)
    lora0, base0, head0 = _snapshot(trainer)
    history = trainer.train(2, progress=False)
    lora1, base1, head1 = _snapshot(trainer)
    assert len(history) == 2 and [r["step"] for r in history] == [1, 2]
    for key in ("reward", "accuracy", "unparseable", "kl", "kl_coef", "entropy", "policy_loss", "value_loss", "clip_frac",
                "approx_kl", "explained_variance", "response_length", "seconds_rollout", "seconds_reward", "seconds_reference",
                "seconds_advantages", "seconds_scoring", "seconds_update"):
        assert key in history[-1], key
    assert all(torch.equal(base0[n], base1[n]) for n in base0)
    assert any(not torch.equal(lora0[n], lora1[n]) for n in lora0)
    assert any(not torch.equal(head0[n], head1[n]) for n in head0)
    assert history[0]["skipped_updates"] == 0
    # the saved adapter is the policy
    path = trainer.save_adapter(tmp_path / "ppo")
    assert (path / "adapter_config.json").is_file() and (path / "training.json").is_file()
    assert (path / "value_head.safetensors").is_file()
    loaded = models.load_model(models.TINY_MODEL, device="cpu", adapter=path)
    step = _look(trainer, rows[:2], 3)
    for i, lp in enumerate(_plain_logprobs(loaded, trainer, step, SMALL.temperature)):
        torch.testing.assert_close(step.logprobs[i, : len(lp)], lp, atol=1e-4, rtol=1e-4)


def test_non_finite_weights_roll_back_and_a_diverging_run_stops_without_saving(rows, tmp_path):
    trainer = _trainer(rows)
    lora0, _, head0 = _snapshot(trainer)
    real_step = trainer.optimizer.step

    def blow_up(*args, **kwargs):  # an optimizer step that leaves NaN in the adapter, as lr=inf would
        real_step(*args, **kwargs)
        with torch.no_grad():
            next(p for n, p in trainer.policy.named_parameters() if "lora_B" in n).fill_(float("nan"))

    trainer.optimizer.step = blow_up
    row = trainer.step()
    assert row["skipped_updates"] == 1  # the batch's one optimizer step, rolled back
    lora1, _, head1 = _snapshot(trainer)
    assert all(torch.equal(lora0[n], lora1[n]) for n in lora0) and all(torch.equal(head0[n], head1[n]) for n in head0)
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())
    with pytest.raises(ppo.TrainingDiverged, match="skipped 4 optimizer steps.*max_skipped_updates=3"):
        trainer.train(5, progress=False)

    # a learning rate that blows up: a clear error, and no adapter with NaN on disk
    with pytest.raises(ppo.TrainingDiverged, match="Lower the learning rate"):
        ppo.train_ppo(models.TINY_MODEL, TASK, rows, ppo.preset("smoke", learning_rate=1e30), steps=8, output_dir=tmp_path,
                      progress=False, device="cpu")
    assert not (tmp_path / "adapters").exists()


def test_target_kl_stops_the_epochs_early(rows):
    strict = ppo.preset("smoke", prompts_per_step=4, batch_size=1, gradient_accumulation_steps=1, ppo_epochs=3, learning_rate=0.5, target_kl=1e-9)
    row = _trainer(rows, strict).step()
    assert row["early_stopped"] == 1


def test_an_interrupted_run_resumes_exactly(rows, tmp_path):
    uninterrupted = _trainer(rows)
    uninterrupted.train(3, progress=False)

    first = _trainer(rows)
    first.train(2, progress=False, checkpoint_dir=tmp_path / "ckpt")
    del first
    random.seed(123)
    torch.manual_seed(123)  # whatever happened in between must not matter
    resumed = _trainer(rows).load_checkpoint(tmp_path / "ckpt")
    assert resumed.step_count == 2 and len(resumed.history) == 2
    resumed.train(3, progress=False)

    lora_a, base_a, head_a = _snapshot(uninterrupted)
    lora_b, base_b, head_b = _snapshot(resumed)
    for name in lora_a:
        torch.testing.assert_close(lora_a[name], lora_b[name], atol=1e-6, rtol=1e-5)
    for name in head_a:
        torch.testing.assert_close(head_a[name], head_b[name], atol=1e-6, rtol=1e-5)
    assert [r["reward"] for r in uninterrupted.history] == [r["reward"] for r in resumed.history]
    assert uninterrupted.kl_controller.value == pytest.approx(resumed.kl_controller.value)
    assert (uninterrupted.data_pass, uninterrupted.position) == (resumed.data_pass, resumed.position)
    # the checkpoint holds the adapter and the value head, not the frozen base model
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as handle:
        assert all("lora_" in k or "value_head" in k for k in handle.keys())

    with pytest.raises(ValueError, match="another PPOConfig"):
        _trainer(rows, ppo.preset("smoke")).load_checkpoint(tmp_path / "ckpt")


def test_grpo_reward_function_maps_completions_and_columns_to_the_reward_table():
    from nlu_helpers import grpo

    reward_fn = grpo.grpo_reward_function(TASK)
    logged = {}
    scores = reward_fn(
        prompts=["p"] * 4,
        completions=[" Positive </Judgement>", " Positive </Judgement>", " Negative", " Positive Negative </Judgement>"],
        completion_ids=[[1]] * 4,
        sentence=["a", "b", "c", "d"], label=[1, 0, 0, 1], idx=[0, 1, 2, 3],
        trainer_state=None, log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    assert scores == [1.0, -1.0, -3.0, -3.0]
    assert logged == {"accuracy": 0.25, "unparseable": 0.5}


def test_policy_figures_from_sampling_equal_a_second_forward_pass(rows):
    """The step takes the policy's log-probs, entropy and values from the states generation
    computed (no second pass over the batch); a full forward pass gives the same numbers."""
    trainer = _trainer(rows)
    _randomise_lora(trainer.policy)
    with torch.no_grad():
        trainer.ac.value_head.linear.weight.normal_()  # a zero head would hide a misaligned state
    step = _look(trainer, rows[:4], 5)
    for i, row in enumerate(step.rows):
        n = int(step.response_mask[i].sum())
        prompt = trainer.tokenizer(trainer.task.build_prompt(row), return_tensors="pt")["input_ids"]
        ids = torch.cat([prompt, step.response_ids[i:i + 1, :n]], dim=1)
        with torch.no_grad():
            logprobs, _, values = trainer.ac(ids, torch.ones_like(ids), n, SMALL.temperature)
        torch.testing.assert_close(step.logprobs[i, :n], logprobs[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(step.values[i, :n], values[0], atol=1e-4, rtol=1e-4)
