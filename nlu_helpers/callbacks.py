"""Callbacks for the ``transformers`` Trainer that SFT runs on: a live loss plot, and the guard
that keeps NaN/inf weights from being trained on or saved."""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
from transformers import TrainerCallback


class LivePlotCallback(TrainerCallback):
    """Feeds the Trainer's logged loss to a :class:`nlu_helpers.plots.LivePlot` (or anything
    with ``update(step, values)``); a resumed run first replays the steps before the checkpoint."""

    def __init__(self, plot: Any, keys: Sequence[str] = ("loss",)):
        self.plot, self.keys = plot, tuple(keys)

    def on_train_begin(self, args, state, control, **kwargs):
        for entry in state.log_history:
            self._update(entry.get("step", 0), entry)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._update(state.global_step, logs or {})

    def on_train_end(self, args, state, control, **kwargs):
        self.plot.update(state.global_step, {}, force=True)

    def _update(self, step: int, logs: Mapping) -> None:
        values = {k: logs[k] for k in self.keys if k in logs}
        if values:
            self.plot.update(step, values)


class NonFiniteWeights(RuntimeError):
    """Training stopped: updates kept making trainable weights NaN/inf (each was rolled back; no adapter saved)."""


class NonFiniteGuard(TrainerCallback):
    """Checks after every optimizer step that the trainable (LoRA) weights are finite.

    The Trainer guards only the logged loss: one blown-up update (a learning rate far too high,
    an fp16 overflow) leaves NaN weights that train on and are saved as the adapter. Here such an
    update is undone (weights and optimizer state as they were before it, as PPO does), counted
    as ``skipped_updates`` in the log and the progress line, and once more than ``max_skipped``
    updates were skipped the run stops with :class:`NonFiniteWeights`. Under DeepSpeed the
    optimizer holds its own sharded copy of the weights, so there the first one stops the run.
    """

    def __init__(self, max_skipped: int = 3):
        self.max_skipped, self.skipped = max_skipped, 0
        self.before: tuple[list[torch.Tensor], dict] | None = None

    @staticmethod
    def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def on_train_begin(self, args, state, control, **kwargs):
        self.skipped = max((e.get("skipped_updates", 0) for e in state.log_history), default=0)  # a resumed run's count

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if args.deepspeed_plugin is None:
            self.before = ([p.detach().clone() for p in self._trainable(model)], copy.deepcopy(optimizer.state_dict()))

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        params = self._trainable(model)
        if bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            return
        self.skipped += 1
        if self.before is None or self.skipped > self.max_skipped:
            raise NonFiniteWeights(
                f"SFT stopped at step {state.global_step + 1}: {self.skipped} update(s) made the LoRA weights NaN/inf "
                f"(max_skipped_updates={self.max_skipped}{'; DeepSpeed: no rollback' if self.before is None else ', each rolled back'}) "
                f"and no adapter was saved; lower learning_rate (now {args.learning_rate:g}) and start over "
                "(--restart; in Python overwrite=True)"
            )
        weights, optimizer_state = self.before
        for p, saved in zip(params, weights):
            p.copy_(saved)
        optimizer.load_state_dict(optimizer_state)
        if state.is_world_process_zero:
            print(f"SFT: step {state.global_step + 1}: the update made LoRA weights NaN/inf; rolled back "
                  f"({self.skipped} skipped, at most {self.max_skipped})", flush=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.skipped and logs is not None:  # the progress callback prints these logs after us
            logs["skipped_updates"] = self.skipped
            if state.log_history:
                state.log_history[-1]["skipped_updates"] = self.skipped
