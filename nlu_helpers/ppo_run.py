"""Everything around one PPO step: the data order, the loop with its progress bar and checkpoints, saving.

:class:`~nlu_helpers.ppo.PPOTrainer` inherits these; :meth:`~nlu_helpers.ppo.PPOTrainer.step`, the
algorithm, is in ``ppo.py``. The attributes used here (``config``, ``rows``, ``accelerator``,
``step_count``, ``data_pass``, ``position``, ``skipped``, ``history``) are set by its ``__init__``.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Sequence

import torch

from nlu_helpers import checkpoints

if TYPE_CHECKING:  # pragma: no cover
    from accelerate import Accelerator

    from nlu_helpers.ppo import PPOConfig, PPOTrainer
    from nlu_helpers.tasks import Task


LOG_KEYS = ("step", "reward", "accuracy", "unparseable", "kl", "kl_coef", "entropy", "policy_loss", "value_loss", "clip_frac",
            "value_clip_frac", "approx_kl", "ratio", "explained_variance", "response_length", "grad_norm", "skipped_updates",
            "early_stopped", "max_new_tokens", "seconds_rollout", "seconds_reward", "seconds_reference", "seconds_advantages",
            "seconds_scoring", "seconds_update", "seconds_step", "data_pass")


class StepTensors(NamedTuple):
    """What one step learnt from (all [B, R] but ``scores`` [B]): for looking at a rollout token by token."""

    rows: list[dict]
    texts: list[str]
    predictions: list
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    scores: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    kl: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def token_table(self, tokenizer: Any, i: int = 0) -> list[dict]:
        """Answer ``i`` token by token: the numbers behind its reward."""
        names = ("logprobs", "ref_logprobs", "kl", "rewards", "values", "advantages", "returns")
        return [{"token": tokenizer.decode([int(self.response_ids[i, t])]), **{n: round(float(getattr(self, n)[i, t]), 4) for n in names}}
                for t in range(int(self.response_mask[i].sum()))]


def checked_rows(task: Any, rows: Any) -> list[dict]:
    """The training rows as dicts, each with a label the task knows."""
    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError(f"no training rows for task {task.name!r}")
    for row in rows:
        task.check_label(row)
    return rows


def make_optimizer(parameters: list[torch.nn.Parameter], config: Any) -> torch.optim.Optimizer:
    """Adafactor (the paper's, constant rate) or AdamW over the trained parameters."""
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(parameters, lr=config.learning_rate, weight_decay=config.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


class PPORun:
    """The parts of a PPO trainer that are not the algorithm."""

    def next_rows(self) -> list[dict]:
        """This process's prompts for the next step, pass after pass over the rows in a seeded order."""
        world, rank, per = self.accelerator.num_processes, self.accelerator.process_index, self.config.prompts_per_step
        picked: list[int] = []
        while len(picked) < per * world:
            order = random.Random(f"{self.config.seed}:{self.data_pass}").sample(range(len(self.rows)), len(self.rows))
            take = order[self.position: self.position + per * world - len(picked)]
            picked, self.position = picked + take, self.position + len(take)
            if self.position >= len(order):
                self.data_pass, self.position = self.data_pass + 1, 0
        return [self.rows[i] for i in picked[rank * per: (rank + 1) * per]]

    def default_steps(self) -> int:
        """Steps for ``config.passes`` passes over the training rows."""
        return max(1, math.ceil(self.config.passes * len(self.rows) / (self.config.prompts_per_step * self.accelerator.num_processes)))

    def train(self, steps: int | None = None, *, callback: Callable[[dict], None] | None = None,
              checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int | None = None, progress: bool = True) -> list[dict]:
        """Step until ``steps`` steps are done in total (a resumed trainer does the rest); ``callback(row)`` sees
        every log row; with ``checkpoint_dir``, a checkpoint every ``checkpoint_every`` steps and at the end."""
        from tqdm.auto import tqdm

        steps = self.default_steps() if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
        if checkpoint_every is not None and (checkpoint_every < 1 or checkpoint_dir is None):
            raise ValueError(f"checkpoint_every={checkpoint_every!r} needs checkpoint_dir and must be >= 1")
        bar = tqdm(total=steps, initial=min(self.step_count, steps), desc="PPO", unit="step",
                   disable=not progress or not self.accelerator.is_main_process)
        while self.step_count < steps:
            row = self.step()
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward']:.2f}", acc=f"{row['accuracy']:.2f}", kl=f"{row['kl']:.2f}", skipped=self.skipped)
            if callback is not None:
                callback(row)
            if checkpoint_every and self.step_count % checkpoint_every == 0:
                self.save_checkpoint(checkpoint_dir)
        bar.close()
        if checkpoint_dir is not None and (not checkpoint_every or self.step_count % checkpoint_every):
            self.save_checkpoint(checkpoint_dir)
        return self.history

    def save_adapter(self, path: str | os.PathLike, *, extra: Mapping[str, Any] | None = None) -> Path:
        """The policy as a LoRA folder (loads with ``models.load_model(base, adapter=path)``), value head and ``training.json``."""
        return checkpoints.save_adapter(self, path, extra)

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Everything needed to continue exactly (:mod:`nlu_helpers.checkpoints`); only complete ones are ever in place."""
        return checkpoints.save_trainer(self, path)

    def load_checkpoint(self, path: str | os.PathLike) -> "PPORun":
        """Restore a checkpoint written by :meth:`save_checkpoint` into this (freshly built) trainer."""
        return checkpoints.load_trainer(self, path)


def train_ppo(model: str, task: str | Task, train_rows: Sequence[Mapping] | Any, config: "PPOConfig | None" = None, *,
              steps: int | None = None, sft_adapter: str | os.PathLike | None = None, output_dir: str | os.PathLike | None = None,
              checkpoint_every: int | None = None, resume: bool = True, callback: Callable[[dict], None] | None = None,
              progress: bool = True, device: str | torch.device = "auto", accelerator: "Accelerator | None" = None) -> "PPOTrainer":
    """Build a trainer, resume from ``<output_dir>/checkpoints/ppo-<task>`` when there is one (and ``resume``),
    train to ``steps`` and save the adapter to ``<output_dir>/adapters/ppo-<task>``."""
    from nlu_helpers.ppo import PAPER, PPOTrainer

    if output_dir is not None:
        checkpoints.check_writable(output_dir)  # fail now, not after hours of training
    trainer = PPOTrainer(model, task, train_rows, config or PAPER, sft_adapter=sft_adapter, device=device, accelerator=accelerator)
    checkpoint = Path(output_dir) / "checkpoints" / f"ppo-{trainer.task.name}" if output_dir is not None else None
    if checkpoint is not None and resume and checkpoints.find(checkpoint) is not None:
        trainer.load_checkpoint(checkpoint)
    trainer.train(steps, callback=callback, checkpoint_dir=checkpoint, checkpoint_every=checkpoint_every, progress=progress)
    if output_dir is not None:
        trainer.save_adapter(Path(output_dir) / "adapters" / f"ppo-{trainer.task.name}")
    return trainer
