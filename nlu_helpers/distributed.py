"""Running PPO on one process or many with ``accelerate``: the plumbing ``ppo.py`` leaves out.

One process and N processes compute the same update: each samples its share of the
prompts (each prompt from its own seed, :mod:`nlu_helpers.generation`), advantages are
whitened over the global batch (:func:`all_sum`), gradients are averaged once per
optimizer step (:func:`backward`), and everyone stops early together
(:func:`mean_over_processes`). Under DeepSpeed ZeRO-3 the weights are sharded and are
gathered whole for generation and saving.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from accelerate import Accelerator

    from nlu_helpers.ppo import PPOConfig


def make_accelerator(config: "PPOConfig", device: str = "auto", dtype: str | torch.dtype = "auto") -> "Accelerator":
    """The ``Accelerator`` PPO runs under, set from the launcher's environment.

    A model that runs in fp16 (a GPU without bf16, such as Colab's T4) trains with loss
    scaling: the LoRA and value-head weights stay fp32 and a GradScaler keeps small fp16
    gradients from underflowing. DeepSpeed cannot infer its micro-batch from a dataloader
    here (PPO has none), so the PPO mini-batch and accumulation go into its config, as TRL's PPO did.
    """
    from accelerate import Accelerator

    from nlu_helpers import models

    target = models.pick_device(device)
    fp16 = target.type == "cuda" and models.pick_dtype(dtype, target) == torch.float16
    accelerator = Accelerator(cpu=target.type == "cpu", mixed_precision="fp16" if fp16 else None)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
        plugin.deepspeed_config["gradient_accumulation_steps"] = config.gradient_accumulation_steps
        plugin.deepspeed_config["train_batch_size"] = config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes
        plugin.deepspeed_config["gradient_clipping"] = config.max_grad_norm or 0.0  # 0: no clipping
    return accelerator


def zero_stage(accelerator: "Accelerator | None") -> int | None:
    """The DeepSpeed ZeRO stage this run uses, or None without DeepSpeed."""
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    return None if plugin is None else int(plugin.zero_stage)


def all_sum(accelerator: "Accelerator", tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over all processes (itself on one)."""
    return tensor if accelerator.num_processes == 1 else accelerator.reduce(tensor, reduction="sum")


def mean_over_processes(accelerator: "Accelerator", value: float) -> float:
    """A number averaged over processes, so every process takes the same decision from it."""
    if accelerator.num_processes == 1:
        return value
    return float(accelerator.reduce(torch.tensor([value], device=accelerator.device), reduction="mean")[0])


class TrainingDiverged(RuntimeError):
    """Too many optimizer steps had non-finite losses, gradients or weights."""


def apply_gradients(accelerator: "Accelerator", model: nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float | None,
                    finite_loss: bool) -> float | None:
    """Clip and apply the accumulated gradients. Returns the gradient norm; None when the step was
    skipped (counted towards ``max_skipped_updates``); NaN when fp16 loss scaling backed off.

    After a synchronised backward every process sees the same gradients, so all take the same
    decision. A non-finite loss or gradient drops the gradients; weights that turn non-finite
    roll back to the last good ones, optimizer state included (a blow-up never reaches the disk).
    Under fp16 loss scaling, overflowing gradients are the GradScaler's business: it skips the
    step and lowers its scale, as it is meant to, and that is not a divergence.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    scaling = getattr(accelerator, "scaler", None) is not None
    if max_grad_norm is not None:
        norm = accelerator.clip_grad_norm_(trainable, max_grad_norm)  # unscales first under fp16
    else:
        norm = None
        accelerator.unscale_gradients()  # a no-op without loss scaling
    if norm is None:  # no clipping asked (or DeepSpeed, which clips inside backward)
        grads = [p.grad.float().norm() for p in trainable if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.tensor(0.0)
    finite_grads = bool(torch.isfinite(torch.as_tensor(norm)))
    if scaling and finite_loss and not finite_grads:
        optimizer.step()  # the GradScaler sees the inf, skips the update and lowers the scale
        optimizer.zero_grad(set_to_none=True)
        return math.nan
    applied = finite_loss and finite_grads
    if applied:
        weights, state = [p.detach().clone() for p in trainable], copy.deepcopy(optimizer.state_dict())
        optimizer.step()
        if not all(bool(torch.isfinite(p).all()) for p in trainable):
            if zero_stage(accelerator) is not None:  # sharded weights and optimizer: no cheap copy to go back to
                raise TrainingDiverged("the weights became non-finite under DeepSpeed; lower the learning rate")
            with torch.no_grad():
                for p, saved in zip(trainable, weights):
                    p.copy_(saved)
            optimizer.load_state_dict(state)
            applied = False
    optimizer.zero_grad(set_to_none=True)
    return float(norm) if applied else None


def backward(accelerator: "Accelerator", model: nn.Module, loss: torch.Tensor, *, sync: bool) -> None:
    """Backward for one micro-batch; gradients are averaged over processes only when ``sync``
    (the last micro-batch before an optimizer step). DeepSpeed divides by its accumulation
    steps itself unless told not to; our loss is already divided."""
    extra = {"scale_wrt_gas": False} if zero_stage(accelerator) is not None else {}
    with contextlib.nullcontext() if sync else accelerator.no_sync(model):
        accelerator.backward(loss, **extra)


@contextlib.contextmanager
def gathered_parameters(accelerator: "Accelerator | None", parameters: Sequence[nn.Parameter], modifier_rank: int | None = None) -> Iterator[None]:
    """Under ZeRO-3 each process holds a shard of every weight: gather them whole for the block
    (every process must enter it). Elsewhere the weights are whole already and nothing happens."""
    if zero_stage(accelerator) != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(parameters), modifier_rank=modifier_rank):
        yield


@contextlib.contextmanager
def gathered_for_generation(model: nn.Module, accelerator: "Accelerator | None") -> Iterator[None]:
    """Whole weights for ``generate`` under ZeRO-3 (LoRA included), gathered once per rollout.

    Without it every layer would be gathered again for every sampled token. DeepSpeed's
    hooks are taken off while the weights are whole and put back after, with TRL's own
    helpers (as its ``unwrap_model_for_generation`` does). Without ZeRO-3 nothing happens.
    """
    if zero_stage(accelerator) != 3:
        yield
        return
    from trl.models.utils import add_hooks, remove_hooks

    with gathered_parameters(accelerator, model.parameters()):
        remove_hooks(model)
        try:
            yield
        finally:
            add_hooks(model)
