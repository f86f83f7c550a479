"""One benchmark entry point: evaluation, LoRA SFT, PPO (by phase) and TRL's GRPO on one model.

    .venv/bin/python -m benchmarks.run --model embedded --preset cpu-demo      # CPU table of benchmarks/README.md
    .venv/bin/python -m benchmarks.run --model qwen2.5-7b                       # one H100: bf16, paper-sized batch
    .venv/bin/python -m benchmarks.run --model tiny-random --quick --in-process # seconds; what the test runs

``--model`` is a hub id, a local folder, ``embedded``/``tiny-random``, or an architecture
name of :mod:`nlu_helpers.architectures` (``smollm2-135m``, ``qwen2.5-0.5b``, ``qwen2.5-1.5b``,
``qwen2.5-7b``, ``llama-2-7b``), built with random weights (speed and memory do not depend
on the values) and the embedded model's tokenizer.

Every workload runs in its own process (``--in-process`` runs them in this one, for tests),
so each has its own memory peak: CUDA ``max_memory_allocated`` on a GPU, peak RSS on the CPU
(``VmHWM``, reset between phases through ``/proc/self/clear_refs``). Each is warmed up,
then timed over several steps; figures are medians.

- ``eval``: examples/s of ``evaluation.evaluate`` in both modes (generate, score).
- ``sft``: TRL's SFTTrainer as ``sft.make_trainer`` builds it, on the PPO batch's rows with
  the PPO mini-batch: steps/s, tokens/s, trainable parameters.
- ``ppo``: ``ppo.PPOTrainer.step`` seconds split into generation, policy/value scoring,
  reference scoring, update and the rest; seconds per generated sample.
- ``grpo``: ``ppo.train_grpo`` (TRL's GRPOTrainer, same reward, same stop string) on the same
  work: as many completions per generation as PPO samples per step, the same mini-batch,
  as many passes (``num_iterations``) as PPO epochs, the same answer cap and temperature.

Then the bounds: decoding's memory-bandwidth bound (bytes of weights + KV cache read per
decode step / bandwidth) and the update's model FLOPs utilisation (6 x params x tokens /
time / peak FLOP/s), against ``--bandwidth-tbs`` and ``--peak-tflops`` (H100 SXM figures by
default on a GPU; on a CPU the rates measured here unless given). A script, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("eval", "sft", "ppo", "grpo")
GIB = 2**30
H100_BANDWIDTH_TBS = 3.35  # H100 SXM HBM3
H100_BF16_TFLOPS = 989.0  # H100 SXM bf16 dense
MACHINE_NOTE = ("figures are medians after warm-up; on a shared machine (other people's tests and trainings "
                "ran concurrently) they are noisy: compare runs made side by side")


@dataclass(frozen=True)
class Sizes:
    """How much work each part does. PPO sizes come from a ``ppo`` preset."""

    name: str
    ppo_preset: str
    warmup: int  # PPO steps / GRPO generation cycles / SFT steps run before timing
    steps: int  # timed PPO steps / GRPO cycles
    sft_steps: int  # timed SFT optimizer steps
    eval_rows: int
    eval_batch_size: int
    eval_repeats: int
    eval_max_new_tokens: int
    grpo_generations: int  # completions per prompt; prompts = PPO prompts / this


SIZES = {
    # The paper's PPO batch: 16 prompts, 4 epochs, mini-batch 8 x 2 accumulation, up to 31 new tokens.
    "paper": Sizes("paper", "paper", warmup=1, steps=3, sft_steps=6, eval_rows=128, eval_batch_size=16,
                   eval_repeats=3, eval_max_new_tokens=8, grpo_generations=4),
    # ppo.CPU_DEMO: 16 prompts, 2 epochs, mini-batch 8, up to 12 new tokens.
    "cpu-demo": Sizes("cpu-demo", "cpu-demo", warmup=1, steps=3, sft_steps=6, eval_rows=32, eval_batch_size=16,
                      eval_repeats=3, eval_max_new_tokens=8, grpo_generations=4),
    # ppo.SMOKE: 4 prompts, 2 epochs, mini-batch 2 x 2, up to 6 new tokens (tests, tiny model).
    "quick": Sizes("quick", "smoke", warmup=1, steps=2, sft_steps=2, eval_rows=8, eval_batch_size=4,
                   eval_repeats=2, eval_max_new_tokens=4, grpo_generations=2),
}


def ppo_config(spec: dict):
    """The preset with a fixed answer cap (its upper end) and no KL early stop, so every step does the same work."""
    from nlu_helpers import ppo

    high = ppo.preset(spec["sizes"]["ppo_preset"]).max_new_tokens[1]
    return ppo.preset(spec["sizes"]["ppo_preset"], max_new_tokens=(high, high), target_kl=None)


# =======================================================================================
# Models: random-weight architectures, and one dtype/device for every load
# =======================================================================================


def is_architecture(name: str) -> bool:
    from nlu_helpers import architectures

    return name.strip().lower() in architectures.ARCHITECTURES and not Path(name).exists()


def random_model(name: str, *, device, dtype, vocab_size: int):
    """``architectures.random_model`` with SDPA, and the vocabulary widened to the tokenizer's when smaller
    (Llama-2's 32000 < SmolLM2's 49152: +1.9% parameters on llama-2-7b; recorded in the JSON)."""
    import torch
    from transformers import AutoModelForCausalLM

    from nlu_helpers import architectures

    config = architectures.config_for(name)
    config.vocab_size = max(config.vocab_size, vocab_size)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


@contextlib.contextmanager
def model_source(spec: dict) -> Iterator[None]:
    """Route the library's ``models.load_model``/``load_tokenizer`` through the benchmark's choice.

    The library loads models by name (``PPOTrainer``, ``sft.make_trainer``, ``train_grpo``);
    here every load gets the benchmark's device and dtype, and an architecture name gets
    random weights (no folder of many GB written and read back) with the embedded tokenizer.
    """
    from nlu_helpers import models

    plain_model, plain_tokenizer = models.load_model, models.load_tokenizer
    name = spec["model"]
    random = is_architecture(name)

    def load_tokenizer(name_or_path, **kwargs):
        if random and os.fspath(name_or_path) == name:
            return plain_tokenizer(models.EMBEDDED_MODEL, **kwargs)
        return plain_tokenizer(name_or_path, **kwargs)

    def load_model(name_or_path, *, device="auto", dtype="auto", **kwargs):
        device = models.pick_device(spec["device"])
        dtype = models.pick_dtype(spec["dtype"], device)
        if random and os.fspath(name_or_path) == name:
            if kwargs.get("adapter") is not None or kwargs.get("load_in_4bit"):
                raise ValueError("random-weight architectures take no adapter and no 4-bit loading")
            tokenizer = load_tokenizer(name)
            model = random_model(name, device=device, dtype=dtype, vocab_size=len(tokenizer))
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            model.generation_config.eos_token_id = tokenizer.eos_token_id
            return model
        return plain_model(name_or_path, device=device, dtype=dtype, **kwargs)

    models.load_model, models.load_tokenizer = load_model, load_tokenizer
    try:
        yield
    finally:
        models.load_model, models.load_tokenizer = plain_model, plain_tokenizer


def model_info(model) -> dict:
    """Parameter counts and the bytes one decode step reads, from the model object itself."""
    from nlu_helpers import models

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    seen, total, weight_bytes = set(), 0, 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel()
        weight_bytes += p.numel() * p.element_size()
    embedding = base.get_input_embeddings().weight
    head = base.get_output_embeddings().weight
    tied = embedding.data_ptr() == head.data_ptr()
    lookup_only = 0 if tied else embedding.numel()  # an untied input embedding is a lookup: no FLOPs, B rows read
    dtype = next(p for p in base.parameters() if p.is_floating_point()).dtype
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    itemsize = embedding.element_size()
    trainable, _ = models.trainable_parameters(model)
    return {
        "parameters": total,
        "trainable_parameters": trainable,
        "matmul_parameters": total - lookup_only,
        "weight_bytes_read_per_decode_step": weight_bytes - lookup_only * itemsize,
        "kv_bytes_per_token": 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * itemsize,
        "dtype": str(dtype).removeprefix("torch."),
        "attn_implementation": getattr(base.config, "_attn_implementation", None),
        "tied_embeddings": tied,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
    }


# =======================================================================================
# Time and peak memory by phase
# =======================================================================================


def _hwm_bytes() -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024


class Meter:
    """Wall time per phase (lists) and peak memory per phase: CUDA max allocated, else RSS.

    On Linux the RSS high-water mark is reset before each phase (``/proc/self/clear_refs``);
    ``overall`` keeps the peak of the whole process (model loading included), read before
    every reset, so no part of the run escapes it.
    """

    def __init__(self, device):
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, list[float]] = {}
        self.peaks: dict[str, float] = {}
        self.overall_rss = 0
        self.overall_cuda = 0  # CUDA max allocated over the whole run, read before every reset
        try:
            _hwm_bytes()
            Path("/proc/self/clear_refs").write_text("5")
            self.can_reset_rss = True
        except (OSError, AttributeError):
            self.can_reset_rss = False
        self.overall_rss = self._read_rss()

    def _read_rss(self) -> int:
        if self.can_reset_rss:
            return max(self.overall_rss, _hwm_bytes())
        return max(self.overall_rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def _reset(self) -> None:
        self.overall_rss = self._read_rss()
        if self.can_reset_rss:
            Path("/proc/self/clear_refs").write_text("5")
        if self.cuda:
            self.overall_cuda = max(self.overall_cuda, self.torch.cuda.max_memory_allocated())
            self.torch.cuda.reset_peak_memory_stats()

    def _peak(self) -> int:
        self.overall_rss = self._read_rss()
        if self.cuda:
            return self.torch.cuda.max_memory_allocated()
        return _hwm_bytes() if self.can_reset_rss else self.overall_rss

    @contextlib.contextmanager
    def phase(self, name: str, memory: bool = True) -> Iterator[None]:
        """Time the block; with ``memory`` also its peak (phases measured for memory must not nest)."""
        self.sync()
        if memory:
            self._reset()
        started = time.perf_counter()
        with self.torch.profiler.record_function(f"phase:{name}"):
            try:
                yield
            finally:
                self.sync()
                self.seconds.setdefault(name, []).append(time.perf_counter() - started)
                if memory:
                    self.peaks[name] = max(self.peaks.get(name, 0), self._peak())

    def wrap(self, function: Callable, name: str, memory: bool = True) -> Callable:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name, memory):
                return function(*args, **kwargs)

        return timed

    def clear(self) -> None:
        """Forget the phases so far (warm-up); the overall peak stays."""
        self.seconds.clear()
        self.peaks.clear()

    def overall(self) -> dict[str, float]:
        figures = {"peak_rss_gib": self._read_rss() / GIB}
        if self.cuda:
            self.overall_cuda = max(self.overall_cuda, self.torch.cuda.max_memory_allocated())
            figures["peak_cuda_gib"] = figures["peak_gib"] = self.overall_cuda / GIB
        else:
            figures["peak_gib"] = figures["peak_rss_gib"]
        return figures

    def phase_figures(self, name: str) -> dict[str, float | None]:
        seconds = self.seconds.get(name, [])
        return {"median_s": statistics.median(seconds) if seconds else None,
                "peak_gib": self.peaks[name] / GIB if name in self.peaks else None}


@contextlib.contextmanager
def patched(owner: Any, name: str, replacement: Callable) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _step_timer(meter: Meter):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Seconds from each optimizer step's start to its end (forward, backward, optimizer; no logging)."""

        def __init__(self):
            self.seconds: list[float] = []
            self.started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            meter.sync()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            meter.sync()
            self.seconds.append(time.perf_counter() - self.started)

    return StepTimer()


def _rows(spec: dict, split: str, n: int) -> list[dict]:
    from nlu_helpers import data

    return [dict(r) for r in data.load_split(spec["task"], split, limit=n, shuffle_seed=0)]


# =======================================================================================
# The parts (each runs in its own process unless --in-process)
# =======================================================================================


def part_eval(spec: dict, meter: Meter) -> dict:
    from benchmarks.eval_speed import forward_flops
    from nlu_helpers import evaluation, models
    from nlu_helpers.tasks import get_task

    sizes = spec["sizes"]
    model = models.load_model(spec["model"])
    tokenizer = models.load_tokenizer(spec["model"])
    rows = _rows(spec, "validation", sizes["eval_rows"])
    task = spec["task"]
    lengths = [len(tokenizer(get_task(task).build_prompt(r))["input_ids"]) for r in rows]
    options = dict(batch_size=sizes["eval_batch_size"], max_new_tokens=sizes["eval_max_new_tokens"], n_bootstrap=0, progress=False)
    figures: dict[str, Any] = {"rows": len(rows), "batch_size": sizes["eval_batch_size"], "mean_prompt_tokens": sum(lengths) / len(lengths),
                               "model": model_info(model)}
    for mode in ("generate", "score"):  # warm-up
        evaluation.evaluate(model, tokenizer, task, rows[: sizes["eval_batch_size"]], mode=mode, **options)
    meter.clear()
    for mode in ("generate", "score"):
        for _ in range(sizes["eval_repeats"]):
            with meter.phase(mode):
                result = evaluation.evaluate(model, tokenizer, task, rows, mode=mode, **options)
        seconds = meter.seconds[mode]
        figures[mode] = {
            "examples_per_s": len(rows) / statistics.median(seconds), "seconds": seconds,
            "accuracy": result.metrics["accuracy"], "unparseable": result.unparseable,
            "peak_gib": meter.peaks[mode] / GIB,
        }
    figures["generate"]["max_new_tokens"] = sizes["eval_max_new_tokens"]
    figures["score"]["forward_flops"] = forward_flops(model.config.get_text_config(), lengths)
    return figures


PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # torch dtype name -> SFTSettings.precision


def part_sft(spec: dict, meter: Meter) -> dict:
    from nlu_helpers import models, sft

    config = ppo_config(spec)
    sizes = spec["sizes"]
    steps = sizes["warmup"] + sizes["sft_steps"]
    per_step = config.batch_size * config.gradient_accumulation_steps
    tokenizer = models.load_tokenizer(spec["model"])
    rows = _rows(spec, "train", steps * per_step)
    examples = [{**e, "completion": e["completion"] + tokenizer.eos_token} for e in sft.sft_examples(spec["task"], rows)]
    settings = sft.SFTSettings(
        learning_rate=config.learning_rate, batch_size=config.batch_size, gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_steps=steps, max_length=1024, lr_scheduler="constant", save_steps=10**9, logging_steps=1,
        lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, lora_bias=config.lora_bias,
        target_modules=config.lora_target_modules, precision=PRECISION[spec["dtype"]], device=spec["device"], seed=config.seed,
    )
    timer = _step_timer(meter)
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as folder:
        trainer = sft.make_trainer(settings, model=spec["model"], examples=examples, output_dir=folder,
                                   tokenizer=tokenizer, callbacks=[timer], progress=False)
        info = model_info(trainer.model)
        with models._quiet(progress_bars=True):
            trainer.train()
    cumulative = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    tokens = [b - a for a, b in zip([0] + cumulative[:-1], cumulative)]
    measured = slice(sizes["warmup"], steps)
    seconds, tokens = timer.seconds[measured], tokens[measured]
    return {
        "model": info, "trainable_parameters": info["trainable_parameters"], "total_parameters": info["parameters"],
        "batch_size": config.batch_size, "gradient_accumulation_steps": config.gradient_accumulation_steps, "sequences_per_step": per_step,
        "steps_measured": len(seconds), "step_seconds": seconds, "median_step_s": statistics.median(seconds),
        "steps_per_s": 1 / statistics.median(seconds), "tokens_per_step": statistics.mean(tokens),
        "tokens_per_s": statistics.median([t / s for t, s in zip(tokens, seconds)]),
    }


def part_ppo(spec: dict, meter: Meter) -> dict:
    import torch

    from nlu_helpers import ppo

    config = ppo_config(spec)
    sizes = spec["sizes"]
    steps = sizes["warmup"] + sizes["steps"]
    rows = _rows(spec, "train", steps * config.prompts_per_step)
    trainer = ppo.PPOTrainer(spec["model"], spec["task"], rows, config, device=spec["device"], dtype=spec["dtype"])
    info = model_info(trainer.ac.policy)
    info["trainable_parameters"] = sum(p.numel() for p in trainer.ac.parameters() if p.requires_grad)  # + value head
    plain_reference = trainer.ac.reference
    reference_s = [0.0]  # per step: evaluate_rollout enters the reference once per chunk of rows

    @contextlib.contextmanager
    def reference():
        started = time.perf_counter()
        with plain_reference():
            yield
        meter.sync()
        reference_s[-1] += time.perf_counter() - started

    shapes = []
    with contextlib.ExitStack() as stack:
        # the trainer calls these module functions by name: time them where they run
        stack.enter_context(patched(ppo, "sample_answers", meter.wrap(ppo.sample_answers, "generate")))
        stack.enter_context(patched(ppo, "evaluate_rollout", meter.wrap(ppo.evaluate_rollout, "score")))
        stack.enter_context(patched(ppo, "ppo_update", meter.wrap(ppo.ppo_update, "update")))
        stack.enter_context(patched(trainer.ac, "reference", reference))
        for i in range(steps):
            if i == sizes["warmup"]:
                meter.clear()
            reference_s[-1] = 0.0
            trainer.step()
            reference_s.append(0.0)
            r = trainer.last_rollout
            width = r.response_width
            shapes.append({"batch": len(r.rows), "prompt_width": r.input_ids.shape[1] - width, "response_width": width,
                           "response_tokens": int(r.response_mask.sum()), "real_tokens": int(r.attention_mask.sum())})
        peaks = meter.overall()  # before profiling: the profiler's own records take memory too
        profile = None
        if spec.get("profile_dir"):
            profile = _profile(lambda: trainer.step(), Path(spec["profile_dir"]) / "ppo-profile.txt", meter)
            meter.seconds = {k: v[: sizes["steps"]] for k, v in meter.seconds.items()}
    history = trainer.history[sizes["warmup"]: steps]
    measured = shapes[sizes["warmup"]:]
    step_s = [row["seconds_step"] for row in history]
    reference_s = reference_s[sizes["warmup"]: steps]
    meter.seconds["score"] = [s - r for s, r in zip(meter.seconds["score"], reference_s)]  # policy log-probs, entropy, values
    phases = {name: meter.phase_figures(name) for name in ("generate", "score", "update")}
    phases["reference"] = {"median_s": statistics.median(reference_s), "peak_gib": None}  # its peak is in "score"'s
    others = [s - reference_s[i] - sum(meter.seconds[n][i] for n in ("generate", "score", "update")) for i, s in enumerate(step_s)]
    phases["other"] = {"median_s": statistics.median(others), "peak_gib": None}  # reward, GAE, logging
    median_step = statistics.median(step_s)
    return {
        **peaks, "model": info, "trainable_parameters": info["trainable_parameters"], "config": config.to_dict(),
        "steps_measured": len(step_s), "step_seconds": step_s, "median_step_s": median_step, "phases": phases,
        "samples_per_step": config.prompts_per_step, "seconds_per_sample": median_step / config.prompts_per_step,
        "mean_response_tokens": statistics.mean(row["response_length"] for row in history),
        "mean_reward": statistics.mean(row["reward"] for row in history),
        "prompt_width": statistics.mean(s["prompt_width"] for s in measured),
        "response_width": statistics.mean(s["response_width"] for s in measured),
        "update_tokens": config.ppo_epochs * statistics.mean(s["real_tokens"] for s in measured),
        "profile": profile, "dtype": info["dtype"], "kv_cache": True,
        "torch_threads": torch.get_num_threads(),
    }


def part_grpo(spec: dict, meter: Meter) -> dict:
    from trl import GRPOTrainer

    from nlu_helpers import ppo

    config = ppo_config(spec)
    sizes = spec["sizes"]
    generations = sizes["grpo_generations"]
    completions = config.prompts_per_step  # per generation: as many as PPO samples per step
    per_device = config.batch_size
    if per_device % generations or completions % per_device:
        raise ValueError(f"GRPO peer needs batch_size ({per_device}) divisible by --grpo-generations ({generations}) "
                         f"and prompts_per_step ({completions}) divisible by batch_size")
    steps_per_generation = completions // per_device
    cycle = steps_per_generation * config.ppo_epochs  # trainer steps per generation batch
    cycles = sizes["warmup"] + sizes["steps"]
    rows = _rows(spec, "train", cycles * completions // generations)
    timer = _step_timer(meter)
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as folder, \
            patched(GRPOTrainer, "_generate", meter.wrap(GRPOTrainer._generate, "generate")), \
            patched(GRPOTrainer, "_generate_and_score_completions",
                    meter.wrap(GRPOTrainer._generate_and_score_completions, "generate_and_score", memory=False)):
        policy, log = ppo.train_grpo(
            spec["model"], spec["task"], rows, output_dir=folder, steps=cycle * cycles, learning_rate=config.learning_rate,
            prompts_per_step=per_device // generations, num_generations=generations, max_new_tokens=config.max_new_tokens[1],
            temperature=config.temperature, beta=0.0, config=config, seed=config.seed, callbacks=[timer],
            steps_per_generation=steps_per_generation, num_iterations=config.ppo_epochs, disable_tqdm=True,
            # TRL turns activation checkpointing on by default; our PPO and SFT run without it
            activation_checkpointing=bool(spec.get("grpo_checkpointing")),
        )
    info = model_info(policy)
    measured = range(sizes["warmup"], cycles)
    cycle_s = [sum(timer.seconds[k * cycle:(k + 1) * cycle]) for k in measured]
    generate = [meter.seconds["generate"][k] for k in measured]
    score = [meter.seconds["generate_and_score"][k] - g for k, g in zip(measured, generate)]
    update = [c - g - s for c, g, s in zip(cycle_s, generate, score)]
    lengths = [e["completions/mean_length"] for e in log if "completions/mean_length" in e]
    rewards = [e["reward"] for e in log if "reward" in e]
    median_cycle = statistics.median(cycle_s)
    return {
        "model": info, "trainable_parameters": info["trainable_parameters"], "num_generations": generations,
        "prompts_per_cycle": completions // generations, "completions_per_cycle": completions,
        "steps_per_cycle": cycle, "steps_per_generation": steps_per_generation, "num_iterations": config.ppo_epochs,
        "per_device_train_batch_size": per_device, "activation_checkpointing": bool(spec.get("grpo_checkpointing")),
        "cycles_measured": len(cycle_s), "cycle_seconds": cycle_s,
        "median_cycle_s": median_cycle, "seconds_per_sample": median_cycle / completions,
        "phases": {"generate": {"median_s": statistics.median(generate), "peak_gib": meter.peaks["generate"] / GIB},
                   "score": {"median_s": statistics.median(score), "peak_gib": None},
                   "update": {"median_s": statistics.median(update), "peak_gib": None}},
        # TRL logs the completions' figures once per cycle (on its first step)
        "mean_completion_tokens": statistics.mean(lengths[sizes["warmup"]:]) if lengths[sizes["warmup"]:] else None,
        "mean_reward": statistics.mean(rewards[sizes["warmup"]:]) if rewards[sizes["warmup"]:] else None,
    }


PART_FUNCTIONS = {"eval": part_eval, "sft": part_sft, "ppo": part_ppo, "grpo": part_grpo}


def _profile(step: Callable[[], Any], path: Path, meter: Meter) -> dict:
    """One more step under ``torch.profiler``; the operator table goes to ``path``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if meter.cuda else [])
    with profile(activities=activities) as prof:
        step()
    sort = "self_device_time_total" if meter.cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40)
    phases = prof.key_averages().table(sort_by="cpu_time_total", row_limit=12)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# torch {torch.__version__}, threads {torch.get_num_threads()}\n\n## by total time\n{phases}\n\n"
                    f"## by self time\n{table}\n")
    return {"file": str(path)}


def run_worker(part: str, spec: dict) -> dict:
    """One part in this process: the model source, threads, the meter; returns its figures."""
    import torch

    from nlu_helpers import models

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from transformers.trainer_callback import PrinterCallback

    device = models.pick_device(spec["device"])
    meter = Meter(device)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    # without progress bars the Trainer prints every log row; the figures come from the log history instead
    with model_source(spec), patched(PrinterCallback, "on_log", lambda *args, **kwargs: None):
        figures = PART_FUNCTIONS[part](spec, meter)
    for key, value in meter.overall().items():
        figures.setdefault(key, value)  # a part may have taken its peak earlier (before profiling)
    figures["seconds_total"] = time.perf_counter() - started
    figures["load_average"] = [load_before, os.getloadavg()[0]]  # 1-minute load before and after: others' work shows here
    return figures


def run_part(part: str, spec: dict, in_process: bool) -> dict:
    if in_process:
        return run_worker(part, spec)
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        spec_file, result_file = Path(folder) / "spec.json", Path(folder) / "result.json"
        spec_file.write_text(json.dumps(spec))
        command = [sys.executable, "-m", "benchmarks.run", "--worker", part, "--spec", str(spec_file), "--result", str(result_file)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "TOKENIZERS_PARALLELISM": "false"}
        completed = subprocess.run(command, cwd=ROOT, env=env)
        if completed.returncode != 0:
            raise RuntimeError(f"benchmark part {part!r} failed (exit status {completed.returncode}); see its output above")
        return json.loads(result_file.read_text())


# =======================================================================================
# Rates, bounds and targets
# =======================================================================================


def measure_cpu_rates(hidden: int, intermediate: int) -> dict:
    """This CPU's fp32 matmul rate on the model's MLP shapes and its copy bandwidth (read + write)."""
    import torch

    from benchmarks.eval_speed import matmul_rate

    flops = matmul_rate(hidden, intermediate)
    a = torch.ones(64 * 2**20)  # 256 MiB
    b = torch.empty_like(a)
    b.copy_(a)
    seconds = []
    for _ in range(5):
        started = time.perf_counter()
        b.copy_(a)
        seconds.append(time.perf_counter() - started)
    return {"peak_flops": flops, "bandwidth_bytes_per_s": 2 * a.numel() * a.element_size() / statistics.median(seconds)}


def bounds(result: dict, rates: dict) -> dict:
    """Decoding's bandwidth bound, the update's MFU, the scoring floor (figures that exist)."""
    bw, peak = rates["bandwidth_bytes_per_s"], rates["peak_flops"]
    figures: dict[str, Any] = {"bandwidth_bytes_per_s": bw, "peak_flops": peak, "rates_source": rates["source"]}
    ppo = result.get("ppo")
    if ppo:
        info = ppo["model"]
        batch, prompt, steps = ppo["samples_per_step"], ppo["prompt_width"], max(ppo["response_width"], 1)
        context = prompt + steps / 2  # mean tokens in the cache over the decode steps
        step_bytes = info["weight_bytes_read_per_decode_step"] + batch * context * info["kv_bytes_per_token"]
        bound_step = step_bytes / bw
        prefill = max(2 * info["matmul_parameters"] * batch * prompt / peak, info["weight_bytes_read_per_decode_step"] / bw)
        generate = ppo["phases"]["generate"]["median_s"]
        figures["decode"] = {
            "bytes_per_step": step_bytes, "bound_ms_per_step": 1e3 * bound_step,
            "bound_tokens_per_s": batch / bound_step,
            "measured_ms_per_step": 1e3 * generate / steps,  # prefill included
            "generation_bound_s": prefill + steps * bound_step, "generation_measured_s": generate,
            "fraction_of_bound": (prefill + steps * bound_step) / generate,
        }
        update = ppo["phases"]["update"]["median_s"]
        flops = 6 * info["matmul_parameters"] * ppo["update_tokens"]
        # LoRA computes no gradients for the frozen weights: forward 2N + input gradients 2N per token
        figures["update"] = {"model_flops": flops, "seconds_at_peak": flops / peak, "measured_s": update,
                             "mfu": flops / update / peak, "mfu_lora_4n": flops * 4 / 6 / update / peak}
    ev = result.get("eval")
    if ev:
        floor = ev["score"]["forward_flops"] / peak
        figures["score_floor"] = {"seconds": floor, "examples_per_s": ev["rows"] / floor,
                                  "fraction_of_floor": ev["score"]["examples_per_s"] / (ev["rows"] / floor)}
    return figures


def targets(result: dict) -> dict:
    figures: dict[str, Any] = {}
    ppo, grpo, sft = result.get("ppo"), result.get("grpo"), result.get("sft")
    if ppo and grpo:
        ratio = ppo["seconds_per_sample"] / grpo["seconds_per_sample"]
        figures["ppo_vs_grpo_seconds_per_sample"] = {"ppo": ppo["seconds_per_sample"], "grpo": grpo["seconds_per_sample"],
                                                     "ratio": ratio, "goal": "<= 1.0", "met": ratio <= 1.0}
    if ppo and sft:
        ratio = ppo["peak_gib"] / sft["peak_gib"]
        figures["ppo_vs_sft_peak_memory"] = {"ppo_gib": ppo["peak_gib"], "sft_gib": sft["peak_gib"], "ratio": ratio,
                                             "goal": "<= 1.25", "met": ratio <= 1.25}
    return figures


# =======================================================================================
# The table
# =======================================================================================


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2e}"
    return str(value)


def format_table(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"model {meta['model']} ({meta['dtype']}, {meta['device']}: {meta['hardware']}), preset {meta['preset']}, "
        f"task {meta['task']}, {meta['threads']} threads; {'in one process' if meta['in_process'] else 'one process per part'}",
        f"note: {MACHINE_NOTE}",
        "",
        f"{'part':<16}{'figure':<34}{'value':>12}  {'peak GiB':>8}",
    ]

    def row(part: str, figure: str, value: Any, peak: Any = None, digits: int = 2) -> None:
        lines.append(f"{part:<16}{figure:<34}{_f(value, digits):>12}  {_f(peak):>8}")

    ev = result.get("eval")
    if ev:
        for mode in ("generate", "score"):
            row(f"eval {mode}", f"examples/s ({ev['rows']} rows, batch {ev['batch_size']})", ev[mode]["examples_per_s"], ev[mode]["peak_gib"])
        row("eval", "process peak", None, ev["peak_gib"])
    sft = result.get("sft")
    if sft:
        row("sft", f"steps/s ({sft['sequences_per_step']} seq/step)", sft["steps_per_s"], sft["peak_gib"], 3)
        row("sft", "tokens/s", sft["tokens_per_s"], None, 1)
        row("sft", "trainable parameters", sft["trainable_parameters"])
    ppo = result.get("ppo")
    if ppo:
        row("ppo", f"s/step ({ppo['samples_per_step']} samples)", ppo["median_step_s"], ppo["peak_gib"])
        for name, label in (("generate", "rollout generation"), ("score", "policy + value scoring"),
                            ("reference", "reference scoring"), ("update", "update"), ("other", "reward, GAE, logging")):
            row("ppo", f"  {label} s", ppo["phases"][name]["median_s"], ppo["phases"][name]["peak_gib"])
        row("ppo", "s per generated sample", ppo["seconds_per_sample"], None, 3)
        row("ppo", "trainable parameters (+ value)", ppo["trainable_parameters"])
    grpo = result.get("grpo")
    if grpo:
        label = f"s/cycle ({grpo['completions_per_cycle']} compl.{', ckpt' if grpo['activation_checkpointing'] else ''})"
        row("grpo (TRL)", label, grpo["median_cycle_s"], grpo["peak_gib"])
        for name, label in (("generate", "generation"), ("score", "reward + old log-probs"), ("update", "update")):
            row("grpo (TRL)", f"  {label} s", grpo["phases"][name]["median_s"], grpo["phases"][name]["peak_gib"])
        row("grpo (TRL)", "s per generated sample", grpo["seconds_per_sample"], None, 3)
    b = result.get("bounds") or {}
    if b:
        lines += ["", f"bounds against {b['bandwidth_bytes_per_s'] / 1e12:.3g} TB/s and {b['peak_flops'] / 1e12:.3g} TFLOP/s ({b['rates_source']}):"]
        if "decode" in b:
            d = b["decode"]
            lines.append(f"  decoding: {d['bytes_per_step'] / 1e9:.3g} GB read per decode step -> bound {d['bound_ms_per_step']:.3g} ms/step "
                         f"({d['bound_tokens_per_s']:.0f} tokens/s); measured {d['measured_ms_per_step']:.3g} ms/step incl. prefill: "
                         f"the rollout runs at {100 * d['fraction_of_bound']:.1f}% of its bound's speed")
        if "update" in b:
            u = b["update"]
            lines.append(f"  PPO update: 6 x params x tokens = {u['model_flops']:.3g} FLOPs, {u['seconds_at_peak']:.3g} s at peak, "
                         f"measured {u['measured_s']:.3g} s -> MFU {100 * u['mfu']:.2f}% (LoRA's 4 x params: {100 * u['mfu_lora_4n']:.2f}%)")
        if "score_floor" in b:
            s = b["score_floor"]
            lines.append(f"  scoring-mode eval: forward FLOPs floor {s['examples_per_s']:.1f} examples/s; measured is "
                         f"{100 * s['fraction_of_floor']:.1f}% of it")
    loads = [f"{part} {result[part]['load_average'][0]:.1f}->{result[part]['load_average'][1]:.1f}" for part in PARTS if result.get(part)]
    lines += ["", f"1-minute load average before->after each part ({result['meta']['hardware_info']['cpu_count']} CPUs): " + ", ".join(loads)]
    t = result.get("targets") or {}
    if t:
        lines.append("")
        if "ppo_vs_grpo_seconds_per_sample" in t:
            x = t["ppo_vs_grpo_seconds_per_sample"]
            lines.append(f"target PPO s/sample <= GRPO's: {x['ppo']:.3f} vs {x['grpo']:.3f} = {x['ratio']:.2f}x -> {'met' if x['met'] else 'NOT met'}")
        if "ppo_vs_sft_peak_memory" in t:
            x = t["ppo_vs_sft_peak_memory"]
            lines.append(f"target PPO peak <= 1.25 x SFT's: {x['ppo_gib']:.2f} vs {x['sft_gib']:.2f} GiB = {x['ratio']:.2f}x -> {'met' if x['met'] else 'NOT met'}")
    return "\n".join(lines)


# =======================================================================================
# Main
# =======================================================================================


def _versions() -> dict:
    import importlib.metadata as md

    return {name: md.version(name) for name in ("torch", "transformers", "trl", "peft", "accelerate")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="hub id, folder, embedded, tiny-random, or an architecture name (random weights)")
    parser.add_argument("--preset", default="paper", choices=sorted(SIZES), help="sizes (default: the paper's PPO batch)")
    parser.add_argument("--quick", action="store_true", help="same as --preset quick (smallest sizes)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated parts to run, of {', '.join(PARTS)}")
    parser.add_argument("--task", default="movie-snippets", help="rows (and so prompt lengths) from this task's data")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on a bf16 GPU, fp32 on CPU), bf16, fp16, fp32")
    parser.add_argument("--warmup", type=int, help="warm-up steps/cycles (default: the preset's)")
    parser.add_argument("--steps", type=int, help="timed PPO steps and GRPO cycles (default: the preset's)")
    parser.add_argument("--sft-steps", type=int, help="timed SFT steps (default: the preset's)")
    parser.add_argument("--eval-rows", type=int, help="rows per evaluation pass (default: the preset's)")
    parser.add_argument("--grpo-generations", type=int, help="GRPO completions per prompt (default: the preset's)")
    parser.add_argument("--grpo-checkpointing", action="store_true",
                        help="run GRPO with activation checkpointing, TRL's default (off by default: PPO and SFT run without)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--bandwidth-tbs", type=float, help=f"memory bandwidth for the bounds, TB/s (GPU default {H100_BANDWIDTH_TBS}: H100 SXM; CPU default: measured)")
    parser.add_argument("--peak-tflops", type=float, help=f"peak FLOP/s for the bounds, TFLOP/s (GPU default {H100_BF16_TFLOPS}: H100 SXM bf16 dense; CPU default: measured)")
    parser.add_argument("--json", help="write the figures here (default runs/benchmarks/<model>-<preset>-<device>.json)")
    parser.add_argument("--profile", metavar="DIR", help="profile one extra PPO step with torch.profiler; table to DIR/ppo-profile.txt")
    parser.add_argument("--in-process", action="store_true", help="run every part in this process (faster; memory peaks then mix)")
    parser.add_argument("--worker", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.preset = "quick"
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        Path(args.result).write_text(json.dumps(run_worker(args.worker, spec)))
        return None

    import torch

    from nlu_helpers import models

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise SystemExit(f"--parts: unknown {unknown}; allowed: {', '.join(PARTS)}")
    sizes = SIZES[args.preset]
    overrides = {"warmup": args.warmup, "steps": args.steps, "sft_steps": args.sft_steps, "eval_rows": args.eval_rows,
                 "grpo_generations": args.grpo_generations}
    sizes = replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    device = models.pick_device(args.device)
    dtype = models.pick_dtype(args.dtype, device)
    spec = {"model": args.model, "task": args.task, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "sizes": asdict(sizes), "threads": args.threads, "profile_dir": args.profile, "grpo_checkpointing": args.grpo_checkpointing}
    if args.threads:
        torch.set_num_threads(args.threads)
    hardware = models.describe_hardware()
    started = time.perf_counter()
    result: dict[str, Any] = {"meta": {
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model, "random_weights": is_architecture(args.model), "preset": sizes.name, "task": args.task,
        "parts": parts, "device": str(device), "dtype": spec["dtype"], "threads": args.threads or torch.get_num_threads(),
        "hardware": hardware["name"], "hardware_info": hardware, "in_process": args.in_process, "sizes": asdict(sizes),
        "versions": _versions(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "note": MACHINE_NOTE,
    }}
    for part in PARTS:
        result[part] = None
    for part in parts:
        print(f"[benchmarks.run] {part} ...", file=sys.stderr, flush=True)
        result[part] = run_part(part, spec, args.in_process)
    info = next((result[p]["model"] for p in ("ppo", "eval", "sft", "grpo") if result[p]), None)
    result["model"] = info
    result["meta"]["ppo_config"] = ppo_config(spec).to_dict()
    if device.type == "cuda" or (args.bandwidth_tbs and args.peak_tflops):
        rates = {"bandwidth_bytes_per_s": (args.bandwidth_tbs or H100_BANDWIDTH_TBS) * 1e12,
                 "peak_flops": (args.peak_tflops or H100_BF16_TFLOPS) * 1e12,
                 "source": "flags" if args.bandwidth_tbs and args.peak_tflops else "H100 SXM defaults (and flags)"}
    else:
        measured = measure_cpu_rates(info["hidden_size"], info["intermediate_size"]) if info else {"peak_flops": 1.0, "bandwidth_bytes_per_s": 1.0}
        rates = {"bandwidth_bytes_per_s": (args.bandwidth_tbs * 1e12) if args.bandwidth_tbs else measured["bandwidth_bytes_per_s"],
                 "peak_flops": (args.peak_tflops * 1e12) if args.peak_tflops else measured["peak_flops"],
                 "source": "measured on this CPU (fp32 matmul of the model's MLP shape; 256 MiB copy)"}
    result["bounds"] = bounds(result, rates) if info else None
    result["targets"] = targets(result)
    result["meta"]["seconds_total"] = time.perf_counter() - started
    print(format_table(result))
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", Path(args.model).name if os.sep in args.model else args.model).strip("-")
    path = Path(args.json) if args.json else ROOT / "runs" / "benchmarks" / f"{slug}-{sizes.name}-{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"figures written to {path}")
    return result


if __name__ == "__main__":
    main()
