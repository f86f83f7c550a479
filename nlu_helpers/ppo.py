"""PPO with LoRA and the paper's rule-based reward, in one file to read top to bottom (TRL 1.13+ has no PPO).

Shaped like CleanRL's ``ppo.py``: settings; KL controllers; the math as pure functions on ``[B, T]``
tensors; the actor-critic; then :meth:`PPOTrainer.step`, whose phases follow each other in the order
they run. Plumbing lives elsewhere: :mod:`~nlu_helpers.generation` (batched generation),
:mod:`~nlu_helpers.policy` (LoRA policy and reference), :mod:`~nlu_helpers.distributed` (processes,
DeepSpeed, guards), :mod:`~nlu_helpers.checkpoints`, :mod:`~nlu_helpers.grpo` (the GRPO peer).
Shapes: ``B`` answers, ``P`` prompt width (left padded), ``R`` answer width (right padded), ``L = P + R``,
``H`` hidden size, ``V`` vocabulary.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nlu_helpers import checkpoints, generation, models
from nlu_helpers import rewards as rewards_lib
from nlu_helpers.distributed import TrainingDiverged, all_sum, apply_gradients, backward, gathered_for_generation, make_accelerator, mean_over_processes
from nlu_helpers.generation import trim_padding
from nlu_helpers.parsing import parse_answer
from nlu_helpers.ppo_run import LOG_KEYS, PPORun, StepTensors, checked_rows, make_optimizer, train_ppo  # noqa: F401 - train_ppo is ppo.train_ppo
from nlu_helpers.policy import as_reference, load_policy, lora_settings, trained_base_parameters
from nlu_helpers.prefix_cache import answer_states
from nlu_helpers.settings import check_names, from_dict, positive_ints, require, to_dict
from nlu_helpers.tasks import Task, get_task, task_of
from nlu_helpers.timing import phase

if TYPE_CHECKING:  # pragma: no cover
    from accelerate import Accelerator
    from peft import PeftModel

KL_ESTIMATORS, OPTIMIZERS = ("k1", "k3"), ("adafactor", "adamw")


# ---------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class PPOConfig:
    """Every knob of PPO; the defaults are the paper's (:data:`PAPER`). Two departures from the
    authors' scripts, on purpose: ``lora_bias="none"`` (their ``"all"`` trains base biases, so
    "adapter off" stops being the base model and the KL reference drifts) and ``disable_dropout``
    (with dropout on, the probability ratio is noisy before any update and the clip fires on noise)."""

    prompts_per_step: int = 16  # prompts sampled per step, per process
    temperature: float = 0.8  # sampling temperature (the authors intended 0.8; their script sampled at 1.0)
    max_new_tokens: tuple[int, int] = (12, 31)  # answer length limit, drawn uniformly from [low, high] each step
    kl_coef: float = 0.2  # initial weight of the per-token KL penalty in the reward
    adaptive_kl: bool = True  # steer kl_coef toward kl_target (Ziegler et al., 2019)
    kl_target: float = 6.0  # target KL per answer, in nats
    kl_horizon: int = 10_000  # how slowly the adaptive coefficient moves
    kl_estimator: str = "k1"  # "k1": log p - log p_ref; "k3": (r - 1) - log r with r = p_ref / p
    reward: rewards_lib.RewardConfig = rewards_lib.PAPER  # the reward table (+1 right, -1 wrong, -3 unparseable)
    gamma: float = 1.0  # discount over answer tokens
    lam: float = 0.95  # GAE's lambda: 1 = Monte Carlo returns, 0 = one-step TD
    whiten_advantages: bool = True  # advantages to mean 0, variance 1 over the global batch
    clip_range: float = 0.2  # the probability ratio is clipped to [1 - c, 1 + c]
    clip_range_value: float = 0.2  # a new value may move at most c from its rollout-time value
    vf_coef: float = 0.1  # weight of the value loss
    ppo_epochs: int = 4  # passes over each rollout
    batch_size: int = 8  # sequences per forward/backward pass on one process (the mini-batch)
    gradient_accumulation_steps: int = 2  # mini-batches per optimizer step
    optimizer: str = "adafactor"  # "adafactor" (the paper's) or "adamw"
    learning_rate: float = 9e-6  # constant
    weight_decay: float = 0.0
    max_grad_norm: float | None = None  # clip the gradient norm (None: no clipping; NaN/inf is still caught)
    target_kl: float | None = None  # stop a batch's remaining epochs once the approx. KL of a step exceeds it
    max_skipped_updates: int = 3  # non-finite loss, gradient or weights: skip; stop the run after more skips than this
    disable_dropout: bool = True  # dropout off during updates: ratio = 1 exactly before the first step
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator (rank-stabilised: alpha / sqrt(r))
    lora_dropout: float = 0.05
    lora_bias: str = "none"  # "none", "all" or "lora_only" (see the class docstring)
    lora_target_modules: tuple[str, ...] | str | None = None  # None: PEFT's default (q_proj, v_proj on Llama)
    value_dropout: float = 0.1  # dropout before the value head's linear layer
    load_in_4bit: bool = False  # QLoRA: the frozen base in 4 bits (CUDA + bitsandbytes), LoRA and value head in full precision
    prefix_cache: bool = True  # the prompts' shared prefix once per rollout, reference chunk and mini-batch (same numbers, faster)
    static_cache: bool = False  # rollouts decode into a fixed-size KV cache: on a GPU a compiled, graph-replayed step (same samples)
    passes: int = 3  # passes over the training rows when train() is given no step count
    seed: int = 0

    def __post_init__(self) -> None:
        positive_ints(self, "prompts_per_step", "ppo_epochs", "batch_size", "gradient_accumulation_steps", "kl_horizon", "passes", "lora_r")
        low_high = tuple(self.max_new_tokens)
        require(self, len(low_high) == 2 and all(isinstance(v, int) and v >= 1 for v in low_high) and low_high[0] <= low_high[1],
                "max_new_tokens", "(low, high) with 1 <= low <= high")
        object.__setattr__(self, "max_new_tokens", low_high)
        require(self, self.prompts_per_step % (self.batch_size * self.gradient_accumulation_steps) == 0, "prompts_per_step",
                f"a multiple of batch_size * gradient_accumulation_steps ({self.batch_size} * {self.gradient_accumulation_steps})")
        for name, allowed in (("kl_estimator", KL_ESTIMATORS), ("optimizer", OPTIMIZERS), ("lora_bias", models.LORA_BIASES)):
            require(self, getattr(self, name) in allowed, name, ", ".join(allowed))
        for name in ("temperature", "learning_rate", "clip_range", "clip_range_value"):
            require(self, getattr(self, name) > 0 and math.isfinite(getattr(self, name)), name, "a finite number > 0")
        require(self, self.kl_coef >= 0, "kl_coef", ">= 0")
        require(self, not self.adaptive_kl or self.kl_target > 0, "kl_target", "> 0 with adaptive_kl")
        for name, low, high in (("gamma", 0, 1), ("lam", 0, 1), ("value_dropout", 0, 0.999), ("lora_dropout", 0, 0.999)):
            require(self, low <= getattr(self, name) <= high, name, f"in [{low}, {high}]")
        for name in ("max_grad_norm", "target_kl"):
            require(self, getattr(self, name) is None or getattr(self, name) > 0, name, "> 0 or None")
        require(self, self.max_skipped_updates >= 0, "max_skipped_updates", ">= 0")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "PPOConfig":
        return from_dict(cls, record, RENAMED, {"reward": rewards_lib.RewardConfig})


RENAMED = {"mini_batch_size": "batch_size", "grad_accum": "gradient_accumulation_steps"}  # the SFT names, since 0.2


PAPER = PPOConfig()
"""The authors' settings (7B on an A100). On the 135M embedded model its learning rate leaves the reward near -3 for an epoch."""

CPU_DEMO = PPOConfig(prompts_per_step=16, batch_size=8, gradient_accumulation_steps=1, ppo_epochs=2, temperature=0.7,
                     max_new_tokens=(8, 12), optimizer="adamw", learning_rate=2e-4, max_grad_norm=1.0, kl_coef=0.05,
                     adaptive_kl=False, target_kl=0.5)
"""Measured on the embedded 135M model (notebook 04): 20x the paper's learning rate, 2 epochs, short answers (answer and
closing tag take ~6 tokens), a lower temperature so enough answers close the tag, a small fixed KL coefficient."""

SMOKE = PPOConfig(prompts_per_step=4, batch_size=2, gradient_accumulation_steps=2, ppo_epochs=2, max_new_tokens=(3, 6),
                  optimizer="adamw", learning_rate=1e-3, max_grad_norm=1.0)
"""Tiny sizes for tests and the papermill smoke run (the tiny random model)."""

PRESETS: dict[str, PPOConfig] = {"paper": PAPER, "cpu-demo": CPU_DEMO, "smoke": SMOKE}


def preset(name: str, **overrides: Any) -> PPOConfig:
    """A preset by name (``"paper"``, ``"cpu-demo"``, ``"smoke"``) with some fields replaced."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in PRESETS:
        raise ValueError(f"unknown PPO preset {name!r}; allowed: {', '.join(PRESETS)}")
    check_names(PPOConfig, overrides, RENAMED)
    return replace(PRESETS[key], **overrides)


# ---------------------------------------------------------------------------------------------------- KL controllers
@dataclass
class FixedKLController:
    """A constant KL coefficient."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:  # noqa: ARG002 - nothing to adapt
        pass


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019), as the authors' TRL 0.11 ran it: with ``e = clip(kl / target - 1, -0.2, 0.2)``,
    ``value *= 1 + e * n_steps / horizon`` after each batch (``n_steps`` = its number of answers)."""

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


def make_kl_controller(config: PPOConfig) -> FixedKLController | AdaptiveKLController:
    return AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon) if config.adaptive_kl else FixedKLController(config.kl_coef)


# ---------------------------------------------------------------------------------------------------- the math
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (padding does not count)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of ``x`` over the real positions."""
    mask = mask.to(x.dtype)
    return ((x - masked_mean(x, mask)) ** 2 * mask).sum() / (mask.sum() - 1).clamp(min=1.0)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``x`` shifted and scaled to mean 0, variance 1 over real tokens (padding 0), so the step size does not
    depend on the reward's scale. ``all_sum`` (a sum over processes) makes them the global batch's statistics."""
    total = all_sum or (lambda t: t)
    mask_f = mask.to(x.dtype)
    n = total(mask_f.sum())
    mean = total((x * mask_f).sum()) / n.clamp(min=1.0)
    var = total(((x - mean) ** 2 * mask_f).sum()) / (n - 1).clamp(min=1.0)
    return (x - mean) * torch.rsqrt(var + eps) * mask_f


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probs. [B, T] -> [B, T].

    ``k1 = log p - log p_ref`` is unbiased but can be negative on a token; ``k3 = (r - 1) - log r``
    (``r = p_ref / p``) is never negative and varies less (Schulman, 2020). Both average to the KL.
    """
    log_ratio = logprobs - ref_logprobs  # [B, T]
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl_estimator {estimator!r} is not known; allowed: {', '.join(KL_ESTIMATORS)}")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Every answer token pays ``kl_coef * kl``; the last real token also gets the answer's score. [B], [B, T] x2 -> [B, T]."""
    mask_f = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask_f  # [B, T]
    last = (mask_f.sum(dim=1).long() - 1).clamp(min=0)  # [B] index of each answer's last token
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over answer tokens. [B, T] x3 -> (advantages, returns).

    Backwards over each answer: ``delta_t = r_t + gamma V(t+1) - V(t)`` (V after the last token = 0),
    ``A_t = delta_t + gamma lam A(t+1)``, ``return_t = A_t + V(t)`` (the value head's target). A padded
    position passes the running advantage and next value through, so padding never changes a real token's A.
    """
    if not rewards.shape == values.shape == mask.shape or rewards.dim() != 2:
        raise ValueError(f"rewards, values and mask must share one [batch, tokens] shape; got "
                         f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}")
    real = mask.bool()  # [B, T]
    advantages = torch.zeros_like(rewards)  # [B, T]
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)  # [B] A(t+1)
    next_value = torch.zeros_like(running)  # [B] V(t+1)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # [B]
        running = torch.where(real[:, t], delta + gamma * lam * running, running)
        next_value = torch.where(real[:, t], values[:, t], next_value)
        advantages[:, t] = torch.where(real[:, t], running, torch.zeros_like(running))
    returns = (advantages + values) * real.to(values.dtype)  # [B, T]
    return advantages, returns


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_range: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate. [B, T] x4 -> (loss, clip fraction, approx. KL).

    ``ratio = p_new / p_old``; loss ``max(-A ratio, -A clip(ratio, 1-c, 1+c))``: once the ratio has moved
    past ``1 + c`` (A > 0) or below ``1 - c`` (A < 0) the token stops pulling. Approx. KL as in CleanRL.
    """
    log_ratio = logprobs - old_logprobs  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    unclipped = -advantages * ratio  # [B, T]
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)  # [B, T]
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return loss, clip_frac, approx_kl


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``0.5 max((V - G)^2, (V_clip - G)^2)``, ``V_clip = V_old + clip(V - V_old, -c, c)``:
    one batch cannot drag the value head far. [B, T] x4 -> (loss, clip fraction)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)  # [B, T]
    loss_unclipped = (values - returns) ** 2  # [B, T]
    loss_clipped = (clipped_values - returns) ** 2  # [B, T]
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask)
    return loss, clip_frac


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(G - V) / Var(G)`` over real tokens: 1 = perfect value head, <= 0 = no better than a constant."""
    var_returns = masked_var(returns, mask)
    return float("nan") if var_returns <= 0 else float(1.0 - masked_var(returns - values, mask) / var_returns)


# ---------------------------------------------------------------------------------------------------- the actor-critic
class ValueHead(nn.Module):
    """Dropout, then one linear layer from the last hidden state to a scalar; starts at exactly 0
    ("no idea"), so the first advantages are the whitened rewards-to-go."""

    def __init__(self, hidden_size: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [B, T, H] -> [B, T]
        return self.linear(self.dropout(hidden)).squeeze(-1)


class ActorCritic(nn.Module):
    """The policy (base model + LoRA) and its value head on the shared trunk, as one module for accelerate/DDP.
    The reference is the same base weights with the adapter off, or a frozen copy of the SFT adapter."""

    def __init__(self, policy: "PeftModel", value_head: ValueHead, *, reference_adapter: str | None = None):
        super().__init__()
        self.policy, self.value_head, self.reference_adapter = policy, value_head, reference_adapter
        self._initial_base = trained_base_parameters(policy)  # swapped in for the reference (lora_bias != "none")

    @property
    def base(self) -> nn.Module:
        return self.policy.get_base_model()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_width: int, temperature: float = 1.0,
                prefix_cache: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-prob, entropy and value at the last ``response_width`` tokens. [B, L] x2 -> 3 x [B, R]. ``prefix_cache``:
        the rows' shared prompt prefix runs once (same numbers; :func:`~nlu_helpers.prefix_cache.answer_states`)."""
        hidden = answer_states(self.base.get_decoder(), input_ids, attention_mask, response_width, share=prefix_cache)  # [B, R, H]
        return self.heads(hidden, input_ids[:, -response_width:], temperature)  # the states before each answer token

    def heads(self, hidden: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-prob, entropy and value from the states before the tokens. [B, R, H], [B, R] -> 3 x [B, R]."""
        logits = self.base.get_output_embeddings()(hidden).float() / temperature  # [B, R, V] (answer positions only)
        log_norm = torch.logsumexp(logits, dim=-1)  # [B, R]
        logprobs = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - log_norm  # [B, R]
        with torch.no_grad():
            entropy = log_norm - (torch.softmax(logits, dim=-1) * logits).sum(-1)  # [B, R]
        return logprobs, entropy, self.value_head(hidden.float())

    def reference(self) -> contextlib.AbstractContextManager:
        """Within the block the model is the reference policy (use under ``torch.no_grad()``)."""
        return as_reference(self.policy, self.reference_adapter, self._initial_base)


def build_policy(model_name: str, config: PPOConfig, *, sft_adapter: str | os.PathLike | None = None,
                 device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> ActorCritic:
    """Load the base model once and make the policy (a fresh LoRA, or the SFT adapter), value head and reference."""
    torch.manual_seed(config.seed)  # a fresh LoRA's A matrices are random
    policy, reference = load_policy(model_name, lora_settings(config), sft_adapter=sft_adapter, device=device, dtype=dtype,
                                    load_in_4bit=config.load_in_4bit)
    head = ValueHead(policy.get_base_model().config.get_text_config().hidden_size, config.value_dropout)
    return ActorCritic(policy, head.to(next(policy.parameters()).device), reference_adapter=reference)


# ---------------------------------------------------------------------------------------------------- training
class PPOTrainer(PPORun):
    """The model, optimizer, KL controller, data order and log of one PPO run; :meth:`step` is the algorithm.

    >>> trainer = PPOTrainer("embedded", "movie-snippets", data.load_split("movie-snippets", "train"), CPU_DEMO)
    >>> trainer.train(steps=30, callback=lambda row: print(row["reward"]))

    Under ``accelerate launch`` each process samples its share of the prompts, gradients are averaged,
    logged numbers are averaged over processes, and only the main process writes files. The data order,
    the loop, saving and resuming are inherited from :class:`~nlu_helpers.ppo_run.PPORun`.
    """

    def __init__(self, model: str, task: str | Task, train_rows: Sequence[Mapping] | Any, config: PPOConfig = PAPER, *,
                 sft_adapter: str | os.PathLike | None = None, device: str | torch.device = "auto",
                 dtype: str | torch.dtype = "auto", accelerator: "Accelerator | None" = None):
        from accelerate.utils import set_seed

        if not isinstance(config, PPOConfig):
            raise TypeError(f"config must be a PPOConfig (or ppo.preset(name)), got {type(config).__name__}")
        self.config, self.model_name, self.task = config, str(model), get_task(task)
        if self.task.kind == "record":
            raise ValueError("task 'record' is judged one candidate at a time: expand rows with tasks.record_candidates first")
        self.rows = checked_rows(self.task, train_rows)
        self.sft_adapter = str(sft_adapter) if sft_adapter is not None else None
        self.accelerator = accelerator or make_accelerator(config, device, dtype)  # fp16 models: loss scaling
        set_seed(config.seed)
        self.tokenizer = models.load_tokenizer(model)
        self.ac = build_policy(self.model_name, config, sft_adapter=sft_adapter, device=self.accelerator.device, dtype=dtype).eval()
        optimizer = make_optimizer([p for p in self.ac.parameters() if p.requires_grad], config)
        self.model, self.optimizer = self.accelerator.prepare(self.ac, optimizer)  # self.model: self.ac, maybe DDP-wrapped
        self.accelerator.register_save_state_pre_hook(checkpoints.keep_trainable)  # checkpoints hold the adapter, not the base
        self.kl_controller = make_kl_controller(config)
        self.length_rng = random.Random(config.seed)  # max_new_tokens per step
        self.shuffle = torch.Generator().manual_seed(config.seed)  # mini-batch order
        self.step_count, self.data_pass, self.position, self.skipped = 0, 0, 0, 0  # position: next row of this pass's order
        self.history: list[dict] = []  # one log row per step
        self.last_step: StepTensors | None = None  # the last step's tensors, to look at

    @property
    def policy(self) -> "PeftModel":  # the policy as a plain PEFT model (what evaluation.evaluate takes)
        return self.ac.policy

    def step(self, rows: Sequence[Mapping] | None = None, *, max_new_tokens: int | None = None,
             seeds: Sequence[int] | None = None, learn: bool = True) -> dict[str, float]:
        """One PPO step on the next training prompts (or on ``rows``); returns its log row.

        ``learn=False`` stops before the update and changes nothing: look at ``last_step`` then.
        """
        cfg, acc, ac = self.config, self.accelerator, self.ac
        seconds: dict[str, float] = {}
        started = time.perf_counter()

        # 1. Rollout: one sampled answer per prompt, cut at </Judgement> ------------------------------------------
        with phase(seconds, "rollout"):
            if rows is None:  # each prompt sampled from its own seed: N processes draw what one would
                rows = self.next_rows()
                first = acc.process_index * cfg.prompts_per_step
                seeds = generation.sample_seeds(cfg.seed, self.step_count, range(first, first + len(rows)))
            rows = [dict(r) for r in rows]
            max_new_tokens = max_new_tokens or self.length_rng.randint(*cfg.max_new_tokens)
            ac.eval()
            with gathered_for_generation(self.model, acc):  # ZeRO-3: the whole weights, once per rollout
                out = generation.generate(ac.policy, self.tokenizer, [self.task.build_prompt(r) for r in rows], max_new_tokens=max_new_tokens,
                                          do_sample=True, temperature=cfg.temperature, seeds=seeds, keep_states=True,
                                          prefix_cache=cfg.prefix_cache, static_cache=cfg.static_cache)
            ids, attn, mask, batch = out.input_ids, out.attention_mask, out.response_mask, len(rows)  # [B, L], [B, L], [B, R]

        # 2. Reward: the reward table scores each answer (+1 right, -1 wrong, -3 unparseable) ---------------------
        with phase(seconds, "reward"):
            scores = torch.tensor([rewards_lib.reward(self.task, t, r, cfg.reward) for t, r in zip(out.texts, rows)],
                                  dtype=torch.float32, device=ids.device)  # [B]
            predictions = [parse_answer(task_of(self.task, r), t, strict=True) for t, r in zip(out.texts, rows)]

        # 3. Log-probs: the sampling policy's from generation's own states, the reference's from a forward pass ---
        with phase(seconds, "reference"), torch.no_grad():
            logprobs, entropy, values = (t * mask for t in ac.heads(out.states, out.response_ids, cfg.temperature))  # [B, R]
            ref_logprobs = torch.zeros_like(logprobs)  # [B, R]
            with ac.reference():
                for start in range(0, batch, cfg.batch_size):
                    chunk = slice(start, start + cfg.batch_size)
                    chunk_ids, chunk_attn, w = trim_padding(ids[chunk], attn[chunk], mask[chunk])
                    ref_logprobs[chunk, :w] = ac(chunk_ids, chunk_attn, w, cfg.temperature, cfg.prefix_cache)[0]  # prefix once per chunk
            ref_logprobs *= mask

        with phase(seconds, "advantages"):
            # 4. KL-shaped rewards: every token pays kl_coef * KL to the reference; the last also gets the score
            kl = kl_per_token(logprobs, ref_logprobs, cfg.kl_estimator) * mask  # [B, R]
            rewards = token_rewards(scores, kl, mask, self.kl_controller.value)  # [B, R]
            # 5. GAE: advantages and the value head's targets, backwards over each answer
            advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)  # [B, R] each
            # 6. Whiten the advantages over the global batch (every process scales alike)
            if cfg.whiten_advantages:
                advantages = whiten(advantages, mask, all_sum=lambda t: all_sum(acc, t))
        self.last_step = StepTensors(rows, out.texts, predictions, out.response_ids, mask, scores, logprobs, ref_logprobs,
                                     values, kl, rewards, advantages, returns)

        # 7. Optimise: epochs of shuffled mini-batches, clipped policy and value losses ---------------------------
        stats: dict[str, list[float]] = defaultdict(list)
        skipped = early_stopped = 0
        with phase(seconds, "update"):
            self.model.train(not cfg.disable_dropout)
            per_step = cfg.batch_size * cfg.gradient_accumulation_steps
            for _epoch in range(cfg.ppo_epochs if learn else 0):
                order = torch.randperm(batch, generator=self.shuffle)
                for step_start in range(0, batch, per_step):
                    step_kl, finite = [], True
                    for micro in range(cfg.gradient_accumulation_steps):
                        idx = order[step_start + micro * cfg.batch_size: step_start + (micro + 1) * cfg.batch_size]
                        mb_ids, mb_attn, w = trim_padding(ids[idx], attn[idx], mask[idx])
                        mb_mask = mask[idx, :w]  # [b, w]
                        new_logprobs, _, new_values = self.model(mb_ids, mb_attn, w, cfg.temperature, cfg.prefix_cache)  # [b, w] each
                        pg_loss, clip_frac, approx_kl = policy_loss(new_logprobs, logprobs[idx, :w], advantages[idx, :w], mb_mask, cfg.clip_range)
                        vf_loss, vf_clip_frac = value_loss(new_values, values[idx, :w], returns[idx, :w], mb_mask, cfg.clip_range_value)
                        loss = pg_loss + cfg.vf_coef * vf_loss
                        finite = finite and bool(torch.isfinite(loss))
                        backward(acc, self.model, loss / cfg.gradient_accumulation_steps, sync=micro == cfg.gradient_accumulation_steps - 1)
                        with torch.no_grad():
                            ratio = masked_mean(torch.exp(new_logprobs - logprobs[idx, :w]), mb_mask)
                        for name, value in (("policy_loss", pg_loss), ("value_loss", vf_loss), ("clip_frac", clip_frac),
                                            ("value_clip_frac", vf_clip_frac), ("approx_kl", approx_kl), ("ratio", ratio)):
                            stats[name].append(float(value.detach()))
                        step_kl.append(float(approx_kl))
                    grad_norm = apply_gradients(acc, self.model, self.optimizer, cfg.max_grad_norm, finite)
                    skipped += grad_norm is None  # non-finite loss, gradient or weights: nothing was applied
                    stats["grad_norm"] += [] if grad_norm is None or math.isnan(grad_norm) else [grad_norm]  # NaN: fp16 scale backed off
                    # averaged over processes, so all stop together (DDP would hang on one that went on)
                    if cfg.target_kl is not None and mean_over_processes(acc, float(np.mean(step_kl))) > cfg.target_kl:
                        early_stopped = 1
                        break
                if early_stopped:
                    break
            self.model.eval()

        # 8. KL controller: the coefficient adapts to this batch's KL per answer (averaged over processes)
        kl_coef = self.kl_controller.value  # the one this batch was shaped with, for the log
        batch_kl = float(acc.reduce(torch.tensor([float(kl.sum(1).mean())], device=acc.device), reduction="mean")[0])
        if learn:
            self.kl_controller.update(batch_kl, cfg.prompts_per_step * acc.num_processes)
            self.step_count += 1

        # 9. Log: this process's figures, averaged over processes -------------------------------------------------
        local = {"reward": float(scores.mean()), "accuracy": float(np.mean([p == r["label"] for p, r in zip(predictions, rows)])),
                 "unparseable": float(np.mean([p is None for p in predictions])), "entropy": float(masked_mean(entropy, mask)),
                 "explained_variance": explained_variance(values, returns, mask), "response_length": float(mask.sum(1).float().mean()),
                 "skipped_updates": float(skipped), "early_stopped": float(early_stopped), **{k: float(np.mean(v)) if v else math.nan for k, v in stats.items()}}
        row = dict(zip(local, acc.reduce(torch.tensor(list(local.values()), device=acc.device), reduction="mean").tolist()))
        seconds["scoring"] = seconds["reward"] + seconds["reference"] + seconds["advantages"]
        row.update(step=self.step_count, kl=batch_kl, kl_coef=kl_coef, max_new_tokens=max_new_tokens, data_pass=self.data_pass,
                   seconds_step=time.perf_counter() - started, **{f"seconds_{k}": v for k, v in seconds.items()})
        if not learn:
            return row
        self.history.append({k: row[k] for k in LOG_KEYS if k in row})
        self.skipped += skipped
        if self.skipped > cfg.max_skipped_updates:
            raise TrainingDiverged(f"PPO skipped {self.skipped} optimizer steps with non-finite losses, gradients or weights "
                                   f"(more than max_skipped_updates={cfg.max_skipped_updates}); the weights are the last finite "
                                   f"ones. Lower the learning rate (now {cfg.learning_rate:g}) or set max_grad_norm.")
        return self.history[-1]
