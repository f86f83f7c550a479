"""Training from the command line, on one process or many: ``python -m nlu_helpers.sft`` and ``python -m nlu_helpers.ppo``.

The notebooks train in one kernel on one device. These entry points run the same code
(:func:`nlu_helpers.sft.train_sft`, :func:`nlu_helpers.ppo.train_ppo`) as a script, so
``accelerate launch`` can start it on every GPU of a machine or of several machines::

    python -m nlu_helpers.sft --model embedded --task movie-snippets --max-steps 30
    accelerate launch --config_file "$(python -m nlu_helpers.launch config multi_gpu)" \\
        -m nlu_helpers.ppo --config my-ppo.yaml --start-from sft

Parameters carry the notebooks' names (``model``, ``task``, ``train_limit``, ``output_dir``,
``overwrite``, ``preset``, ``ppo_steps``, ``start_from``, ...) plus every field of
:class:`~nlu_helpers.sft.SFTSettings` or :class:`~nlu_helpers.ppo.PPOConfig`. Values are
read as YAML (``--max-steps 30`` is a number, ``--target-modules null`` is None,
``--max-new-tokens "[8, 12]"`` a pair). ``--config FILE`` takes them from a YAML file: a
flat mapping of parameters, or a workbook profile (``parameters:`` plus ``notebooks:``,
a shipped profile can be named: ``--config smoke``). The command line wins over the file.

Files go where the notebooks look for them: ``<output_dir>/adapters/sft-<task>`` (notebook
03 run afterwards with the same parameters finds the finished adapter and only evaluates;
notebook 04 with ``start_from="sft"`` starts from it) and ``<output_dir>/checkpoints/ppo-<task>``
and ``<output_dir>/adapters/ppo-<task>`` (a PPO checkpoint resumes with the same number of
processes only: each process's data share and RNG state are in it). Only the main process
writes files.

The shipped ``accelerate`` configurations live in ``nlu_helpers/accelerate_configs/``;
``python -m nlu_helpers.launch config NAME`` prints the path of one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import yaml

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from accelerate import Accelerator

    from nlu_helpers.ppo import PPOConfig, PPOTrainer
    from nlu_helpers.sft import SFTSettings

KINDS = ("sft", "ppo")
ACCELERATE_CONFIGS = ("single_gpu", "multi_gpu", "deepspeed_zero2", "deepspeed_zero3")
SFT_PRESETS = ("cpu-demo", "paper")
# As in notebook 04: these PPO parameters given as null mean "the preset's value".
PRESET_WHEN_NULL = {"learning_rate", "temperature"}
# Notebook parameters that mean something else there: notebook 04's max_new_tokens is for evaluation, not the
# rollout range of PPOConfig, so a profile's value is not taken for it.
PROFILE_SKIPS = {"sft": set(), "ppo": {"max_new_tokens"}}
# The notebook each entry point stands for: a profile's per-notebook parameters come from there.
NOTEBOOK_OF = {"sft": "03_lora_sft", "ppo": "04_ppo"}

# Parameters that are not fields of SFTSettings / PPOConfig, with their defaults and what they mean.
COMMON = {
    "model": ("embedded", "base model: 'embedded', 'tiny-random', a hub id or a folder"),
    "task": ("movie-snippets", "registry task: 'sst2', 'rte', 'mnli', 'boolq', ..."),
    "train_limit": (None, "training rows, a seeded sample (null: the whole split)"),
    "output_dir": ("runs/cli", "run folder; the adapter goes to <output_dir>/adapters/<method>-<task>"),
    "weights_dump": (None, "a folder where every process writes its trained weights as rank-<i>.safetensors "
                           "(to check that all processes agree)"),
}
SFT_ONLY = {
    "preset": ("cpu-demo", f"base settings that the other parameters change: {', '.join(SFT_PRESETS)}"),
    "overwrite": (False, "start over even when the adapter folder holds a finished or interrupted run"),
}
PPO_ONLY = {
    "preset": ("cpu-demo", "base PPOConfig that the other parameters change: paper, cpu-demo, smoke"),
    "ppo_steps": (None, "PPO steps in total (null: `passes` passes over the training rows)"),
    "start_from": ("base", "'base': a fresh adapter on the base model; 'sft': <output_dir>/adapters/sft-<task> "
                           "(notebook 03's); or an adapter folder (the frozen SFT policy is then the reference)"),
    "checkpoint_every": (None, "write a checkpoint every N steps (one is always written at the end)"),
    "resume": (True, "continue from <output_dir>/checkpoints/ppo-<task> when it exists"),
    "device": ("auto", "'auto' (this process's GPU if there is one, else the CPU) or 'cpu'"),
}


# --------------------------------------------------------------------------- accelerate configs


def accelerate_config(name: str) -> Path:
    """The path of a shipped ``accelerate`` config file (for ``accelerate launch --config_file``)."""
    key = str(name).strip().removesuffix(".yaml").replace("-", "_")
    if key not in ACCELERATE_CONFIGS:
        raise ValueError(f"unknown accelerate config {name!r}; allowed: {', '.join(ACCELERATE_CONFIGS)}")
    return Path(str(resources.files("nlu_helpers") / "accelerate_configs" / f"{key}.yaml"))


# --------------------------------------------------------------------------- parameters

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-2`` and ``2e-4`` as strings; numbers are meant."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip()
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    return value


def _fields(kind: str) -> dict[str, Any]:
    """Every parameter an entry point takes, with its default (settings fields from the preset)."""
    from nlu_helpers import ppo, sft

    if kind == "sft":
        settings = {f.name: getattr(sft.CPU_DEMO, f.name) for f in dataclasses.fields(sft.SFTSettings)}
        extra = SFT_ONLY
    elif kind == "ppo":
        settings = {f.name: getattr(ppo.CPU_DEMO, f.name) for f in dataclasses.fields(ppo.PPOConfig)}
        extra = PPO_ONLY
    else:
        raise ValueError(f"unknown entry point {kind!r}; allowed: {', '.join(KINDS)}")
    own = {name: default for name, (default, _) in {**COMMON, **extra}.items()}
    return {**own, **settings}


def _settings_names(kind: str) -> set[str]:
    from nlu_helpers import ppo, sft

    cls = sft.SFTSettings if kind == "sft" else ppo.PPOConfig
    return {f.name for f in dataclasses.fields(cls)}


def read_config(path_or_profile: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Parameters from a YAML file: a flat mapping, or a workbook profile (``parameters`` +
    ``notebooks``; a shipped profile may be given by name). Profiles also carry notebook-only
    parameters (``eval_limit``, ``n_bootstrap``, ...): those are left out here, while a flat
    file naming an unknown parameter is an error."""
    from nlu_helpers import runner

    path = Path(path_or_profile).expanduser()
    if path.is_file():
        loaded = yaml.safe_load(path.read_text()) or {}
    elif str(path_or_profile) in runner.profiles():
        loaded = runner.load_profile(str(path_or_profile))
    else:
        raise FileNotFoundError(
            f"config {str(path_or_profile)!r} is neither a YAML file nor a shipped profile; profiles: {', '.join(runner.profiles())}"
        )
    if not isinstance(loaded, Mapping):
        raise ValueError(f"config {str(path_or_profile)!r} must hold a mapping of parameters, got {type(loaded).__name__}")
    known = _fields(kind)
    if "parameters" in loaded or "notebooks" in loaded:  # a profile: keep what this entry point knows
        notebook = (loaded.get("notebooks") or {}).get(NOTEBOOK_OF[kind]) or {}
        merged = {**(loaded.get("parameters") or {}), **notebook}
        wanted = set(known) - PROFILE_SKIPS[kind]
        return {k.replace("-", "_"): _number(v) for k, v in merged.items() if k.replace("-", "_") in wanted}
    values = {str(k).replace("-", "_"): _number(v) for k, v in loaded.items()}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"config {str(path_or_profile)!r} has unknown parameters {unknown}; allowed: {sorted(known)}")
    return values


def build_parser(kind: str) -> argparse.ArgumentParser:
    """One ``--name`` option (dashes or underscores) per parameter; values are parsed as YAML."""
    defaults = _fields(kind)
    helps = {name: text for name, (_, text) in {**COMMON, **(SFT_ONLY if kind == "sft" else PPO_ONLY)}.items()}
    what = "LoRA SFT (TRL's SFTTrainer)" if kind == "sft" else "PPO with LoRA and the rule-based reward"
    parser = argparse.ArgumentParser(
        prog=f"python -m nlu_helpers.{kind}",
        description=f"{what}, on one process or under `accelerate launch`. Values are YAML: 30, 2e-4, null, '[8, 12]'.",
    )
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML file (flat parameters, or a workbook profile) or a shipped profile name")
    settings = _settings_names(kind)
    for name, default in defaults.items():
        origin = "preset" if name in settings else "default"
        text = helps.get(name, f"{'SFTSettings' if kind == 'sft' else 'PPOConfig'} field")
        options = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if isinstance(default, bool) else {}
        parser.add_argument(*options, dest=name, default=argparse.SUPPRESS, metavar="VALUE",
                            help=f"{text} ({origin}: {default!r})", **extra)
    return parser


def parse_args(kind: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """All parameters of an entry point: defaults, then the ``--config`` file, then the command line."""
    parser = build_parser(kind)
    args = vars(parser.parse_args(argv))
    config_file = args.pop("config", None)
    values = _fields(kind)
    given = read_config(config_file, kind) if config_file else {}
    given.update({name: _number(yaml.safe_load(text)) if isinstance(text, str) else text for name, text in args.items()})
    values.update(given)
    values["_given"] = sorted(given)  # what was asked for, so the preset supplies the rest
    return values


def _split(kind: str, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings fields that were given, everything else)."""
    settings = _settings_names(kind)
    given = set(values.get("_given", ()))
    fields = {k: v for k, v in values.items() if k in settings and k in given}
    rest = {k: v for k, v in values.items() if k not in settings and k != "_given"}
    return fields, rest


# --------------------------------------------------------------------------- weights of every process


def dump_weights(module: "torch.nn.Module", folder: str | os.PathLike, rank: int) -> Path:
    """Write the module's trainable weights to ``<folder>/rank-<rank>.safetensors``.

    Every process calls it with its own copy: equal files prove the processes ended with
    the same model (gradients were averaged, every optimizer made the same step).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().to("cpu").contiguous().clone() for name, p in module.named_parameters() if p.requires_grad}
    if not tensors:
        raise ValueError("the module has no trainable weights to dump")
    path = folder / f"rank-{rank}.safetensors"
    save_file(tensors, str(path))
    return path


def _weights_dump_callback(folder: str | os.PathLike) -> Any:
    """A Trainer callback that dumps each process's trainable weights when training ends."""
    from accelerate import PartialState
    from transformers import TrainerCallback

    class WeightsDump(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 - Trainer's signature
            dump_weights(model, folder, PartialState().process_index)

    return WeightsDump()


# --------------------------------------------------------------------------- SFT


def sft_settings(values: Mapping[str, Any]) -> "SFTSettings":
    """The preset's ``SFTSettings`` with the given fields changed."""
    from nlu_helpers import sft

    fields, rest = _split("sft", values)
    preset = str(rest["preset"]).strip().lower().replace("_", "-")
    bases = {"cpu-demo": sft.CPU_DEMO, "paper": sft.PAPER}
    if preset not in bases:
        raise ValueError(f"unknown SFT preset {rest['preset']!r}; allowed: {', '.join(SFT_PRESETS)}")
    return bases[preset].replace(**fields)


def run_sft(values: Mapping[str, Any]) -> Path:
    """Train (or resume, or find finished) the SFT adapter the notebook 03 parameters describe."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from nlu_helpers import data, models, sft
    from nlu_helpers.tasks import get_task

    _, rest = _split("sft", values)
    settings = sft_settings(values)
    task = get_task(rest["task"])
    rows = data.load_split(task, "train", limit=rest["train_limit"], shuffle_seed=settings.seed)
    adapter_dir = Path(rest["output_dir"]) / "adapters" / f"sft-{task.name}"
    state = PartialState(cpu=models.pick_device(settings.device).type == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU"))
    callbacks = [_weights_dump_callback(rest["weights_dump"])] if rest["weights_dump"] else []
    if state.is_main_process:
        print(f"SFT on {state.num_processes} process(es): model {rest['model']!r}, task {task.name!r}, "
              f"{len(rows)} rows, global batch {settings.batch_size * settings.gradient_accumulation_steps * state.num_processes}",
              flush=True)
    path = sft.train_sft(settings, model=rest["model"], train_rows=rows, task=task, output_dir=adapter_dir,
                         callbacks=callbacks, overwrite=bool(rest["overwrite"]), progress=state.is_main_process)
    if state.is_main_process:
        info = sft.read_training_info(path)
        print(json.dumps({"adapter": str(path), "steps": info["steps"], "final_loss": info["final_loss"],
                          "seconds": info["seconds"]}), flush=True)
    return path


# --------------------------------------------------------------------------- PPO


def make_accelerator(config: "PPOConfig", device: str = "auto") -> "Accelerator":
    """The ``Accelerator`` PPO runs under, set from the launcher's environment.

    DeepSpeed cannot infer its micro-batch from a dataloader here (PPO has none), so the
    PPO mini-batch and accumulation are written into its config, as TRL's PPO did.
    """
    from accelerate import Accelerator

    from nlu_helpers import models

    accelerator = Accelerator(cpu=models.pick_device(device).type == "cpu")
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
        plugin.deepspeed_config["gradient_accumulation_steps"] = config.gradient_accumulation_steps
        plugin.deepspeed_config["train_batch_size"] = config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes
        plugin.deepspeed_config["gradient_clipping"] = config.max_grad_norm or 0.0  # 0: no clipping
    return accelerator


def ppo_config(values: Mapping[str, Any]) -> "PPOConfig":
    """The preset's ``PPOConfig`` with the given fields changed (null learning rate or temperature: the preset's)."""
    from nlu_helpers import ppo

    fields, rest = _split("ppo", values)
    fields = {k: v for k, v in fields.items() if not (v is None and k in PRESET_WHEN_NULL)}
    if isinstance(fields.get("max_new_tokens"), int) and not isinstance(fields["max_new_tokens"], bool):
        fields["max_new_tokens"] = (fields["max_new_tokens"], fields["max_new_tokens"])  # one length: low = high
    if isinstance(fields.get("reward"), Mapping):
        from nlu_helpers import rewards

        fields["reward"] = rewards.RewardConfig(**fields["reward"])
    for name in ("max_new_tokens", "lora_target_modules"):
        if isinstance(fields.get(name), list):
            fields[name] = tuple(fields[name])
    return ppo.preset(rest["preset"], **fields)


def start_adapter_dir(start_from: str | os.PathLike, output_dir: str | os.PathLike, task_name: str) -> Path | None:
    """Where PPO starts, as notebook 04's ``start_from``: None for the base model, else an adapter folder."""
    if str(start_from) == "base":
        return None
    folder = Path(output_dir) / "adapters" / f"sft-{task_name}" if str(start_from) == "sft" else Path(start_from).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise ValueError(f"start_from={str(start_from)!r}: {str(folder)!r} holds no adapter (no adapter_config.json); "
                         "allowed: 'base', 'sft' (after `python -m nlu_helpers.sft` with the same output_dir) or an adapter folder")
    return folder


def run_ppo(values: Mapping[str, Any]) -> "PPOTrainer":
    """Train PPO as notebook 04 does (resuming from its checkpoint when there is one)."""
    from nlu_helpers import data, ppo
    from nlu_helpers.tasks import get_task

    _, rest = _split("ppo", values)
    config = ppo_config(values)
    task = get_task(rest["task"])
    accelerator = make_accelerator(config, rest["device"])
    rows = data.load_split(task, "train", limit=rest["train_limit"], shuffle_seed=config.seed)
    start_adapter = start_adapter_dir(rest["start_from"], rest["output_dir"], task.name)
    checkpoint = Path(rest["output_dir"]) / "checkpoints" / f"ppo-{task.name}"  # where train_ppo keeps it
    if accelerator.is_main_process:
        print(f"PPO on {accelerator.num_processes} process(es): model {rest['model']!r}, task {task.name!r}, "
              f"{len(rows)} rows, {config.prompts_per_step * accelerator.num_processes} prompts per step", flush=True)
        if rest["resume"] and (checkpoint / "state.json").is_file():
            done = json.loads((checkpoint / "state.json").read_text())["step_count"]
            print(f"PPO: resuming from {checkpoint} (step {done})", flush=True)
    trainer = ppo.train_ppo(
        rest["model"], task, rows, config, steps=rest["ppo_steps"], sft_adapter=start_adapter,
        output_dir=rest["output_dir"], checkpoint_every=rest["checkpoint_every"], resume=bool(rest["resume"]),
        progress=accelerator.is_main_process, device=rest["device"], accelerator=accelerator,
    )
    if rest["weights_dump"]:
        dump_weights(trainer.ac, rest["weights_dump"], accelerator.process_index)
    if accelerator.is_main_process:
        last = trainer.history[-1] if trainer.history else {}
        print(json.dumps({"adapter": str(Path(rest["output_dir"]) / "adapters" / f"ppo-{task.name}"),
                          "steps": trainer.step_count, **{k: last[k] for k in ("reward", "accuracy", "kl") if k in last}}),
              flush=True)
    accelerator.wait_for_everyone()
    return trainer


# --------------------------------------------------------------------------- command lines


def main(kind: str, argv: Sequence[str] | None = None) -> Any:
    """``python -m nlu_helpers.sft`` / ``python -m nlu_helpers.ppo`` (alone or under ``accelerate launch``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown entry point {kind!r}; allowed: {', '.join(KINDS)}")
    values = parse_args(kind, argv)
    return run_sft(values) if kind == "sft" else run_ppo(values)


def _cli(argv: Sequence[str] | None = None) -> None:
    """``python -m nlu_helpers.launch config NAME``: the path of a shipped accelerate config."""
    parser = argparse.ArgumentParser(prog="python -m nlu_helpers.launch", description=_cli.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("config", help="print the path of a shipped accelerate config")
    show.add_argument("name", choices=ACCELERATE_CONFIGS)
    commands.add_parser("configs", help="list the shipped accelerate configs")
    args = parser.parse_args(argv)
    if args.command == "config":
        print(accelerate_config(args.name))
    else:
        for name in ACCELERATE_CONFIGS:
            print(f"{name:16s} {accelerate_config(name)}")


if __name__ == "__main__":
    _cli(sys.argv[1:])
