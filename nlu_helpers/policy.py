"""The LoRA policy PPO trains and the reference it is held to, on one copy of the base weights.

From the base model: a fresh LoRA is the policy and the reference is the same model with
the adapter switched off. From an SFT adapter: it is loaded twice, as the trainable policy
and as a frozen ``"reference"`` adapter (a few MB each). Base parameters that the adapter
trains too (``lora_bias != "none"``, the authors' ``"all"``) are kept as they started and
swapped in while the reference runs, so the reference stays exact.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from nlu_helpers import models

if TYPE_CHECKING:  # pragma: no cover
    from peft import PeftModel

POLICY_ADAPTER = "default"  # PEFT saves "default" straight into the folder: a PPO adapter loads like an SFT one
REFERENCE_ADAPTER = "reference"


def lora_settings(config: Any) -> Any:
    """The ``peft.LoraConfig`` that a settings object's ``lora_*`` fields describe."""
    targets = config.lora_target_modules
    return models.lora_config(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout, bias=config.lora_bias,
                              target_modules=list(targets) if isinstance(targets, tuple) else targets)


def load_policy(model_name: str, lora: Any, *, sft_adapter: str | os.PathLike | None = None, device: str | torch.device = "auto",
                dtype: str | torch.dtype = "auto", load_in_4bit: bool = False) -> tuple["PeftModel", str | None]:
    """The trainable policy and the name of its reference adapter (None: the reference is the adapter switched off).
    ``load_in_4bit``: the frozen base in 4 bits (QLoRA, CUDA only); the adapters stay in full precision."""
    base = dict(device=device, dtype=dtype, load_in_4bit=load_in_4bit)
    if sft_adapter is None:
        return models.add_lora(models.load_model(model_name, **base), lora), None
    adapter_dir = Path(sft_adapter).expanduser()
    policy = models.load_model(model_name, **base, adapter=adapter_dir, trainable_adapter=True)
    with models._quiet():
        policy.load_adapter(str(adapter_dir), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    policy.set_adapter(POLICY_ADAPTER)
    return policy, REFERENCE_ADAPTER


def trained_base_parameters(policy: "PeftModel") -> dict[str, torch.Tensor]:
    """Copies of the base-model parameters the adapter trains (biases with ``lora_bias != "none"``), as they are now."""
    return {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad and "lora_" not in n}


@contextlib.contextmanager
def as_reference(policy: "PeftModel", reference_adapter: str | None, initial: dict[str, torch.Tensor]) -> Iterator[None]:
    """Within the block ``policy`` computes the reference policy (use under ``torch.no_grad()``)."""
    swapped = {}
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if name in initial:
                swapped[name] = p.detach().clone()
                p.copy_(initial[name])
    try:
        if reference_adapter is not None:
            policy.set_adapter(reference_adapter, inference_mode=True)
            try:
                yield
            finally:
                policy.set_adapter(POLICY_ADAPTER)  # trainable again
        else:
            with warnings.catch_warnings():  # PEFT warns that with trained biases adapter-off is not the base: the swap fixed that
                warnings.filterwarnings("ignore", message="Careful, disabling adapter layers")
                with policy.disable_adapter():
                    yield
    finally:
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if name in swapped:
                    p.copy_(swapped[name])
