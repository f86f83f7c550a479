"""Training checkpoints that hold no code, are checked before use, and survive a kill at any instant.

``accelerate``'s :meth:`~accelerate.Accelerator.save_state` writes the trained weights
(safetensors: only the parameters that train, not the frozen base model), the optimizer,
and every process's RNG state; :meth:`~accelerate.Accelerator.load_state` reads them back
with ``torch.load(weights_only=True)``, which unpickles tensors and plain containers only.
The loop's own position (step, data order, KL coefficient, its private RNGs, the log) is
JSON in ``state.json``. Not ``register_for_checkpointing``: accelerate loads those
objects with ``weights_only=False``, which would run any code a crafted file holds.

``state.json`` is written last and lists every other file with its SHA-256, so a missing,
truncated or altered file is named before anything is loaded. A new checkpoint is built
in a temporary folder and swapped in by two renames; a kill between them leaves
``<name>.old``, which :func:`find` takes back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from nlu_helpers.assets import sha256_of
from nlu_helpers.results import write_atomic

if TYPE_CHECKING:  # pragma: no cover
    from accelerate import Accelerator

    from nlu_helpers.ppo import PPOTrainer

STATE_FILE = "state.json"
REMEDY = "delete the folder (or pass --restart) to start over"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as it is; the message names the file and the remedy."""


def keep_trainable(models: list, weights: list, _output_dir: str) -> None:
    """An accelerate save-state hook: keep only the parameters that train (adapter, value head), not the frozen base."""
    for i, state in enumerate(weights):
        keep = {name for name, p in models[i].named_parameters() if p.requires_grad}
        weights[i] = {name: tensor for name, tensor in state.items() if name in keep}


def check_writable(folder: str | os.PathLike) -> Path:
    """``folder``, created if needed, after proving a file can be written there: before training, not after."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise OSError(f"cannot write to {folder} ({error.strerror or error}); choose another output folder") from None
    return folder


def find(path: str | os.PathLike) -> Path | None:
    """The checkpoint at ``path``, or the one a kill left as ``<path>.old`` (moved back), or None."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not (path / STATE_FILE).is_file() and (old / STATE_FILE).is_file():
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):  # another process may have moved it back first
            os.replace(old, path)
    return path if (path / STATE_FILE).is_file() else None


def save(accelerator: "Accelerator", path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write weights, optimizer and RNG (accelerate) and ``state`` (JSON) to ``path`` (every process calls this)."""
    path = Path(path)
    build = path.with_name(f".{path.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(build), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {f.name: sha256_of(f) for f in sorted(build.iterdir()) if f.is_file()}
        write_atomic(build / STATE_FILE, json.dumps({**state, "files": files}, indent=1))
        old = path.with_name(path.name + ".old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)  # a kill here leaves <name>.old, which find() moves back
        os.replace(build, path)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def verify(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``state.json``, after checking that every file it lists is there and unchanged."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
        files = state["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a checkpoint (no {STATE_FILE}); {REMEDY}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path / STATE_FILE} is damaged ({error}); {REMEDY}") from None
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing; {REMEDY}")
        if sha256_of(file) != digest:
            raise CheckpointError(f"checkpoint file {file} is damaged (its SHA-256 differs from {STATE_FILE}'s); {REMEDY}")
    return state


def load(accelerator: "Accelerator", path: str | os.PathLike) -> dict[str, Any]:
    """Check the checkpoint, then restore weights, optimizer and RNG into the prepared objects; returns ``state``."""
    path = Path(path)
    state = verify(path)
    rng = path / f"random_states_{accelerator.process_index}.pkl"
    if rng.name not in state["files"]:
        raise CheckpointError(f"checkpoint {path} has no RNG state for process {accelerator.process_index} "
                              f"(it was written by {state.get('num_processes', '?')} processes); {REMEDY}")
    if "optimizer.bin" not in state["files"] and not any(name.startswith("pytorch_model") for name in state["files"]):
        raise CheckpointError(f"checkpoint {path} has no optimizer state (optimizer.bin); {REMEDY}")
    from accelerate.utils import load as safe_load  # torch.load(weights_only=True), numpy's RNG types allowed

    from safetensors import safe_open

    weights = path / "model.safetensors"
    if weights.is_file():
        with safe_open(str(weights), "pt") as handle:
            saved = set(handle.keys())
        wanted = {name for name, p in accelerator._models[0].named_parameters() if p.requires_grad}
        if saved != wanted:
            raise CheckpointError(f"{weights} holds other weights than this model trains ({len(saved ^ wanted)} names differ, "
                                  f"e.g. {sorted(saved ^ wanted)[:3]}); {REMEDY}")
    try:  # accelerate swallows a failing RNG file; read it once here so a bad one is named
        safe_load(rng)
        accelerator.load_state(str(path), strict=False)  # strict=False: the frozen base weights are not in it
    except Exception as error:  # noqa: BLE001 - any failure here means the checkpoint cannot be used
        raise CheckpointError(f"checkpoint {path} could not be loaded ({type(error).__name__}: {error}); {REMEDY}") from None
    return state


# ---------------------------------------------------------------------------------------------------- a PPO run's files
def trained_tensors(trainer: "PPOTrainer") -> dict[str, torch.Tensor]:
    """The trainer's trained tensors, checked: nothing non-finite is ever written."""
    from nlu_helpers.distributed import TrainingDiverged

    trained = {n: p for n, p in trainer.ac.named_parameters() if p.requires_grad}
    bad = [n for n, p in trained.items() if not bool(torch.isfinite(p).all())]
    if bad:
        raise TrainingDiverged(f"refusing to save non-finite weights ({bad[:2]}); lower the learning rate")
    return trained


def save_adapter(trainer: "PPOTrainer", path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """The PPO policy as a LoRA folder, with the tokenizer, the value head (safetensors) and ``training.json``."""
    from safetensors.torch import save_file

    from nlu_helpers import models
    from nlu_helpers.distributed import gathered_parameters
    from nlu_helpers.policy import POLICY_ADAPTER

    path, accelerator = Path(path), trainer.accelerator
    accelerator.wait_for_everyone()
    with gathered_parameters(accelerator, list(trained_tensors(trainer).values())):  # ZeRO-3: whole weights to save
        if accelerator.is_main_process:
            path.mkdir(parents=True, exist_ok=True)
            with models._quiet():
                trainer.ac.policy.save_pretrained(str(path), selected_adapters=[POLICY_ADAPTER])
            head = {k: v.detach().cpu().contiguous() for k, v in trainer.ac.value_head.state_dict().items()}
            save_file(head, str(path / "value_head.safetensors"))
    if accelerator.is_main_process:
        trainer.tokenizer.save_pretrained(str(path))
        info = {"method": "ppo", "model": trainer.model_name, "task": trainer.task.name, "sft_adapter": trainer.sft_adapter,
                "steps": trainer.step_count, "config": trainer.config.to_dict(), "kl_coef": trainer.kl_controller.value,
                "final": trainer.history[-1] if trainer.history else None, **dict(extra or {})}
        write_atomic(path / "training.json", json.dumps(info, indent=1))
    return path


def _identity(trainer: "PPOTrainer") -> dict[str, Any]:
    """What a checkpoint must agree on with the trainer that resumes it."""
    return {"model": trainer.model_name, "task": trainer.task.name, "sft_adapter": trainer.sft_adapter, "n_rows": len(trainer.rows),
            "num_processes": trainer.accelerator.num_processes, "config": trainer.config.to_dict()}


def save_trainer(trainer: "PPOTrainer", path: str | os.PathLike) -> Path:
    """A PPO checkpoint: weights, optimizer, RNGs (accelerate) and the loop's position and log (JSON)."""
    trained_tensors(trainer)
    length_rng = trainer.length_rng.getstate()
    return save(trainer.accelerator, path, {
        **_identity(trainer), "step_count": trainer.step_count, "data_pass": trainer.data_pass, "position": trainer.position,
        "skipped": trainer.skipped, "kl_coef": trainer.kl_controller.value, "history": trainer.history,
        "length_rng": [length_rng[0], list(length_rng[1]), length_rng[2]], "shuffle": trainer.shuffle.get_state().tolist()})


def load_trainer(trainer: "PPOTrainer", path: str | os.PathLike) -> "PPOTrainer":
    """Restore :func:`save_trainer`'s checkpoint into a freshly built trainer of the same run."""
    from nlu_helpers.distributed import gathered_parameters

    state = verify(path)
    for key, mine in _identity(trainer).items():
        if state.get(key) != mine:
            what = "another PPOConfig" if key == "config" else f"{key}={state.get(key)!r} (this run: {mine!r})"
            raise CheckpointError(f"checkpoint {path} was written with {what}; {REMEDY}")
    with gathered_parameters(trainer.accelerator, list(trained_tensors(trainer).values()), modifier_rank=0):
        load(trainer.accelerator, path)
    trainer.step_count, trainer.data_pass, trainer.position = state["step_count"], state["data_pass"], state["position"]
    trainer.skipped, trainer.kl_controller.value, trainer.history = state["skipped"], float(state["kl_coef"]), state["history"]
    version, internal, gauss = state["length_rng"]
    trainer.length_rng.setstate((version, tuple(internal), gauss))
    trainer.shuffle.set_state(torch.tensor(state["shuffle"], dtype=torch.uint8))
    return trainer
