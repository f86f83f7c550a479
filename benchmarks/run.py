"""One benchmark entry point: evaluation, LoRA SFT, PPO (by phase) and TRL's GRPO on one model.

    .venv/bin/python -m benchmarks.run --model embedded --preset cpu-demo      # CPU table of benchmarks/README.md
    .venv/bin/python -m benchmarks.run --model qwen2.5-7b                       # one H100: bf16, paper-sized batch
    .venv/bin/python -m benchmarks.run --model tiny-random --quick --in-process # seconds; what the test runs

``--model`` is a hub id, a local folder, ``embedded``/``tiny-random``, or an architecture
name of :mod:`nlu_helpers.architectures` (``smollm2-135m``, ``qwen2.5-0.5b``, ``qwen2.5-1.5b``,
``qwen2.5-7b``, ``llama-2-7b``), built once with random weights (speed and memory do not
depend on the values) and the embedded model's tokenizer, and written as an ordinary model
folder (``--weights-dir``, default the workbook's cache) that every part loads by path.

Nothing of the package is replaced at run time: the figures come from what the code records.

- ``eval``: examples/s of ``evaluation.evaluate`` in both modes (generate, score), timed
  around whole calls.
- ``sft``: TRL's SFTTrainer as ``sft.make_trainer`` builds it, on the PPO batch's rows with
  the PPO mini-batch: steps/s (a ``TrainerCallback`` around each optimizer step), tokens/s
  (TRL's ``num_tokens`` in the log), trainable parameters.
- ``ppo``: ``ppo.PPOTrainer.step``: its phases are the ``seconds_<phase>`` of its own log
  rows (``nlu_helpers.timing.phase``: rollout, reward, reference, advantages, update;
  the rest of ``seconds_step`` is the KL controller and logging); seconds per generated sample.
  ``--static-cache`` then runs the same trainer with ``PPOConfig.static_cache`` (a fixed-size
  KV cache, so transformers compiles the decoding step on a GPU): the same prompts and seeds
  both ways (same samples? log-probs?), then timed steps by phase, and the decode bound for both.
- ``grpo``: ``grpo.train_grpo`` (TRL's GRPOTrainer, same reward, same stop string) on the same
  work: as many completions per generation as PPO samples per step, the same mini-batch,
  as many passes (``num_iterations``) as PPO epochs, the same answer cap and temperature.
  Timed per optimizer step by a callback: a cycle's first step generates and scores, the
  others only update, so generation + scoring = first step - a plain update step.

Every part runs in its own process (``--in-process`` runs them in this one, for tests), so
each has its own memory peak: CUDA ``max_memory_allocated`` on a GPU, peak RSS on the CPU
(``VmHWM``, reset through ``/proc/self/clear_refs``), taken around whole steps (a PPO step, a
PPO step without its update, a trainer step). Each part is warmed up, then timed over
several steps; figures are medians.

Then the bounds, against rates probed here (best of ``--probe-repeats`` repeats, on the PPO
update's own matmul shapes at its mini-batch's token count, with their spread) or given
(``--peak-tflops``, ``--bandwidth-tbs``; H100 SXM figures by default on a GPU): decoding's
memory-bandwidth bound, and the update's utilisation, from the FLOPs it does (forward and
input gradients through the frozen weights, LoRA's gradients, the LM head on answer tokens,
causal attention; real tokens only) and by the 6N convention. A figure above 100% of its
bound is flagged: the probe was then no bound (a contended probe). A script, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
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
PPO_PHASES = ("rollout", "reward", "reference", "advantages", "update")  # PPOTrainer.step's timing.phase names, in order
GIB = 2**30
H100_BANDWIDTH_TBS = 3.35  # H100 SXM HBM3
H100_BF16_TFLOPS = 989.0  # H100 SXM bf16 dense
PROBE_REPEATS = 7
MACHINE_NOTE = ("figures are medians after warm-up; on a shared machine (other people's tests and trainings "
                "ran concurrently) they are noisy: compare runs made side by side")
RANDOM_RECIPE = 1  # bump when the random-weight folder's recipe changes: cached folders are then rebuilt


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
# Models: random-weight architectures as model folders, and what a model is made of
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


def random_model_folder(name: str, *, device, dtype, root: str | os.PathLike | None = None) -> Path:
    """An architecture with random weights as a model folder (weights, config, the embedded tokenizer).

    Written once per architecture, dtype and recipe, then reused: every part (and the package's own
    loaders: ``PPOTrainer``, ``sft.make_trainer``, ``train_grpo``) loads it by path like any model.
    Built on ``device`` (a GPU initialises a 7B model in seconds), written to a temporary sibling and
    renamed into place, so a folder that exists is complete.
    """
    import gc
    import shutil

    import torch

    from nlu_helpers import architectures, models
    from nlu_helpers.assets import cache_dir

    tokenizer = models.load_tokenizer(models.EMBEDDED_MODEL)
    recipe = {"architecture": architectures.architecture(name), "vocab_size": len(tokenizer),
              "dtype": str(dtype).removeprefix("torch."), "recipe": RANDOM_RECIPE}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    parent = Path(root) if root is not None else cache_dir() / "benchmark-models"
    target = parent / f"{name.strip().lower()}-{recipe['dtype']}-{digest}"
    if (target / "benchmark-random.json").is_file():
        return target
    parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=parent))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = random_model(name, device=device, dtype=dtype, vocab_size=len(tokenizer))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(build)
        tokenizer.save_pretrained(build)
        (build / "benchmark-random.json").write_text(json.dumps(recipe, indent=1))
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        build.chmod(0o755)
        try:
            build.rename(target)
        except OSError:  # another run put it in place first
            if not (target / "benchmark-random.json").is_file():
                raise
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return target


def model_info(model) -> dict:
    """Parameter counts, the matmuls a pass runs and the bytes one decode step reads, from the model object itself."""
    from benchmarks.eval_speed import linear_shapes
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
    linear = linear_shapes(model)
    return {
        "parameters": total,
        "trainable_parameters": trainable,
        "matmul_parameters": total - lookup_only,
        "layer_matmul_parameters": linear["layer_parameters"],  # the decoder blocks' linear layers (not LoRA's, not the head)
        "lm_head_parameters": linear["head"][0] * linear["head"][1],
        "lora_parameters": linear["lora_parameters"],
        "linear_shapes": linear,
        "attention_width": config.num_attention_heads * head_dim,
        "weight_bytes_read_per_decode_step": weight_bytes - lookup_only * itemsize,
        "kv_bytes_per_token": 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * itemsize,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(embedding.device),
        "attn_implementation": getattr(base.config, "_attn_implementation", None),
        "tied_embeddings": tied,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
    }


# =======================================================================================
# Peak memory around whole blocks
# =======================================================================================


def _hwm_bytes() -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024


class Meter:
    """Wall time and peak memory of blocks the benchmark runs whole (an evaluation pass, a PPO step,
    a trainer step): CUDA max allocated on a GPU, else RSS.

    On Linux the RSS high-water mark is reset at each block's start (``/proc/self/clear_refs``);
    ``overall`` keeps the peak of the whole process (model loading included), read before every
    reset, so no part of the run escapes it.
    """

    def __init__(self, device):
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, list[float]] = {}
        self.peaks: dict[str, int] = {}
        self.overall_rss = 0
        self.overall_cuda = 0  # CUDA max allocated over the part, read before every reset
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()  # from here: a random-weight build before this part is not its peak
        try:
            Path("/proc/self/clear_refs").write_text("5")
            _hwm_bytes()
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

    def start(self) -> None:
        """Reset the peak: what :meth:`stop` reads is this block's."""
        self.sync()
        self.overall_rss = self._read_rss()
        if self.can_reset_rss:
            Path("/proc/self/clear_refs").write_text("5")
        if self.cuda:
            self.overall_cuda = max(self.overall_cuda, self.torch.cuda.max_memory_allocated())
            self.torch.cuda.reset_peak_memory_stats()

    def stop(self) -> int:
        """The peak since :meth:`start`, in bytes."""
        self.sync()
        self.overall_rss = self._read_rss()
        if self.cuda:
            return self.torch.cuda.max_memory_allocated()
        return _hwm_bytes() if self.can_reset_rss else self.overall_rss

    @contextlib.contextmanager
    def block(self, name: str) -> Iterator[None]:
        """Time the block and take its peak (blocks must not nest)."""
        self.start()
        started = time.perf_counter()
        try:
            yield
        finally:
            peak = self.stop()
            self.seconds.setdefault(name, []).append(time.perf_counter() - started)
            self.peaks[name] = max(self.peaks.get(name, 0), peak)

    def clear(self) -> None:
        """Forget the blocks so far (warm-up); the overall peak stays."""
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


def _step_timer(meter: Meter):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Seconds and peak memory from each optimizer step's start to its end (forward, backward, optimizer; no logging)."""

        def __init__(self):
            self.seconds: list[float] = []
            self.peaks: list[int] = []
            self.started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            meter.start()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.peaks.append(meter.stop())
            self.seconds.append(time.perf_counter() - self.started)

    return StepTimer()


def _rows(spec: dict, split: str, n: int) -> list[dict]:
    from nlu_helpers import data

    return [dict(r) for r in data.load_split(spec["task"], split, limit=n, shuffle_seed=0)]


def _summary(seconds: list[float]) -> dict:
    return {"median_s": statistics.median(seconds) if seconds else None, "seconds": seconds}


# =======================================================================================
# The parts (each runs in its own process unless --in-process)
# =======================================================================================


def part_eval(spec: dict, meter: Meter) -> dict:
    from benchmarks.eval_speed import forward_flops
    from nlu_helpers import evaluation, models
    from nlu_helpers.tasks import get_task

    sizes = spec["sizes"]
    device = models.pick_device(spec["device"])
    model = models.load_model(spec["load"], device=device, dtype=models.pick_dtype(spec["dtype"], device))
    tokenizer = models.load_tokenizer(spec["load"])
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
            with meter.block(mode):
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
    from transformers.trainer_callback import PrinterCallback

    from nlu_helpers import models, sft

    config = ppo_config(spec)
    sizes = spec["sizes"]
    steps = sizes["warmup"] + sizes["sft_steps"]
    per_step = config.batch_size * config.gradient_accumulation_steps
    tokenizer = models.load_tokenizer(spec["load"])
    rows = _rows(spec, "train", steps * per_step)
    examples = [{**e, "completion": e["completion"] + tokenizer.eos_token} for e in sft.sft_examples(spec["task"], rows)]
    settings = sft.SFTSettings(
        learning_rate=config.learning_rate, batch_size=config.batch_size, gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_steps=steps, max_length=1024, lr_scheduler="constant", save_steps=10**9, logging_steps=1,
        lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, lora_bias=config.lora_bias,
        lora_target_modules=config.lora_target_modules, precision=PRECISION[spec["dtype"]], device=spec["device"], seed=config.seed,
    )
    timer = _step_timer(meter)
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as folder:
        trainer = sft.make_trainer(settings, model=spec["load"], examples=examples, output_dir=folder,
                                   tokenizer=tokenizer, callbacks=[timer], progress=False)
        trainer.remove_callback(PrinterCallback)  # without progress bars the Trainer prints every log row; we read the log
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
        "step_peak_gib": max(timer.peaks[measured]) / GIB,
    }


def batch_shape(trainer, tokenizer) -> dict:
    """The token counts of the trainer's last step, from its prompts and its answers' mask."""
    last = trainer.last_step
    prompts = [len(ids) for ids in tokenizer([trainer.task.build_prompt(r) for r in last.rows])["input_ids"]]
    answers = last.response_mask.sum(1).tolist()  # [B]
    return {"batch": len(prompts), "prompt_width": max(prompts), "response_width": int(last.response_mask.shape[1]),
            "prompt_tokens": sum(prompts), "response_tokens": int(sum(answers)),
            "real_tokens": sum(prompts) + int(sum(answers)), "sum_squared_lengths": sum((p + a) ** 2 for p, a in zip(prompts, answers))}


def ppo_phases(rows: list[dict]) -> dict:
    """Each phase's seconds from the log rows PPOTrainer.step wrote; ``other`` is the rest of ``seconds_step``."""
    phases = {name: _summary([row[f"seconds_{name}"] for row in rows]) for name in PPO_PHASES}
    phases["other"] = _summary([row["seconds_step"] - sum(row[f"seconds_{n}"] for n in PPO_PHASES) for row in rows])
    return phases


def part_ppo(spec: dict, meter: Meter) -> dict:
    import torch

    from nlu_helpers import ppo

    config = ppo_config(spec)
    sizes = spec["sizes"]
    steps = sizes["warmup"] + sizes["steps"]
    rows = _rows(spec, "train", steps * config.prompts_per_step)
    trainer = ppo.PPOTrainer(spec["load"], spec["task"], rows, config, device=spec["device"], dtype=spec["dtype"])
    info = model_info(trainer.ac.policy)
    info["trainable_parameters"] = sum(p.numel() for p in trainer.ac.parameters() if p.requires_grad)  # + value head
    shapes = []
    for i in range(steps):
        if i == sizes["warmup"]:
            meter.clear()
        with meter.block("step"):  # memory (and a wall-clock check on seconds_step) around the whole step
            trainer.step()
        shapes.append(batch_shape(trainer, trainer.tokenizer))
    with meter.block("no_update"):  # the same prompts up to the update: rollout, reward, reference, advantages
        trainer.step(rows=trainer.last_step.rows, learn=False)
    peaks = meter.overall()  # before profiling: the profiler's own records take memory too
    static = ppo_static_cache(trainer, config, sizes) if spec.get("static_cache") else None
    profile = None
    if spec.get("profile_dir"):
        profile = _profile(trainer.step, Path(spec["profile_dir"]) / "ppo-profile.txt", meter)
    log_rows = trainer.history[sizes["warmup"]: steps]
    measured = shapes[sizes["warmup"]:]
    step_s = [row["seconds_step"] for row in log_rows]
    median_step = statistics.median(step_s)

    def mean(key: str) -> float:
        return statistics.mean(s[key] for s in measured)

    return {
        **peaks, "model": info, "trainable_parameters": info["trainable_parameters"], "config": config.to_dict(),
        "steps_measured": len(step_s), "step_seconds": step_s, "median_step_s": median_step,
        "step_wall_seconds": meter.seconds["step"], "phases": ppo_phases(log_rows),
        "phase_source": "log rows: seconds_<phase> that PPOTrainer.step records (nlu_helpers.timing.phase)",
        "log_rows": [{k: v for k, v in row.items() if k.startswith("seconds_") or k in ("step", "reward", "response_length")}
                     for row in log_rows],
        "memory": {"step_peak_gib": meter.peaks["step"] / GIB, "no_update_peak_gib": meter.peaks["no_update"] / GIB,
                   "how": "peak around whole timed steps, and around one step(learn=False) on the last step's prompts"},
        "samples_per_step": config.prompts_per_step, "seconds_per_sample": median_step / config.prompts_per_step,
        "mean_response_tokens": statistics.mean(row["response_length"] for row in log_rows),
        "mean_reward": statistics.mean(row["reward"] for row in log_rows),
        "prompt_width": mean("prompt_width"), "response_width": mean("response_width"),
        "update_tokens": config.ppo_epochs * mean("real_tokens"),
        "update_work": {"epochs": config.ppo_epochs, "tokens": mean("real_tokens"), "answer_tokens": mean("response_tokens"),
                        "sum_squared_lengths": mean("sum_squared_lengths"),
                        # one mini-batch as the matmuls see it (padded to its widest row): the rate probe's shapes
                        "minibatch_tokens": round(config.batch_size * (mean("prompt_width") + mean("response_width"))),
                        "minibatch_answer_tokens": round(config.batch_size * mean("response_width"))},
        "profile": profile, "dtype": info["dtype"], "kv_cache": True, "static_cache": static,
        "torch_threads": torch.get_num_threads(),
    }


def ppo_static_cache(trainer, config, sizes: dict) -> dict:
    """The same trainer again with ``PPOConfig.static_cache``: rollouts decode into a fixed-size cache (compiled and
    replayed as a CUDA graph on a GPU). First the same prompts and seeds both ways without learning (do the samples
    and log-probs agree?), then warm-up (the compilation) and timed steps, by phase."""
    from nlu_helpers import generation

    rows, high = trainer.last_step.rows, config.max_new_tokens[1]
    seeds = generation.sample_seeds(config.seed, 10**6, range(len(rows)))  # a draw no training step uses
    trainer.step(rows=rows, seeds=seeds, max_new_tokens=high, learn=False)
    grown = trainer.last_step
    trainer.config = replace(config, static_cache=True)
    first = trainer.step(rows=rows, seeds=seeds, max_new_tokens=high, learn=False)  # compiles the decoding step on a GPU
    fixed = trainer.last_step
    answers = [[ids[m.bool()].tolist() for ids, m in zip(step.response_ids, step.response_mask)] for step in (grown, fixed)]
    same = [a == b for a, b in zip(*answers)]
    logprob_diff = max((float((grown.logprobs[i, :len(a)] - fixed.logprobs[i, :len(a)]).abs().max())
                        for i, a in enumerate(answers[0]) if same[i] and a), default=None)
    start = len(trainer.history)
    for _ in range(sizes["warmup"] + sizes["steps"]):
        trainer.step()
    log_rows = trainer.history[start + sizes["warmup"]:]
    trainer.config = config
    step_s = [row["seconds_step"] for row in log_rows]
    return {"same_samples": sum(same) / len(same), "rows_compared": len(same), "max_logprob_diff_same_samples": logprob_diff,
            "first_rollout_s": first["seconds_rollout"], "steps_measured": len(step_s), "step_seconds": step_s,
            "median_step_s": statistics.median(step_s), "phases": ppo_phases(log_rows),
            "how": "same prompts and seeds, dynamic then static cache, no learning; then warm-up and timed steps"}


def part_grpo(spec: dict, meter: Meter) -> dict:
    from nlu_helpers import models
    from nlu_helpers.grpo import train_grpo

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
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as folder:
        policy, log = train_grpo(
            spec["load"], spec["task"], rows, output_dir=folder, steps=cycle * cycles, learning_rate=config.learning_rate,
            prompts_per_step=per_device // generations, num_generations=generations, max_new_tokens=config.max_new_tokens[1],
            temperature=config.temperature, beta=0.0, config=config, seed=config.seed, callbacks=[timer],
            steps_per_generation=steps_per_generation, num_iterations=config.ppo_epochs, disable_tqdm=True,
            # TRL turns activation checkpointing on by default; our PPO and SFT run without it
            activation_checkpointing=bool(spec.get("grpo_checkpointing")),
        )
    info = model_info(policy)
    measured = range(sizes["warmup"], cycles)
    steps_of = [timer.seconds[k * cycle:(k + 1) * cycle] for k in measured]  # each cycle's optimizer steps
    peaks_of = [timer.peaks[k * cycle:(k + 1) * cycle] for k in measured]
    cycle_s = [sum(s) for s in steps_of]
    # a cycle's first step generates, scores (rewards, old log-probs) and updates; the others only update
    generate = [s[0] - statistics.median(s[1:]) for s in steps_of] if cycle > 1 else None
    update = [c - g for c, g in zip(cycle_s, generate)] if generate else cycle_s
    lengths = [e["completions/mean_length"] for e in log if "completions/mean_length" in e]
    rewards = [e["reward"] for e in log if "reward" in e]
    median_cycle = statistics.median(cycle_s)
    auto_device = models.pick_device("auto")
    return {
        "model": info, "trainable_parameters": info["trainable_parameters"], "num_generations": generations,
        "prompts_per_cycle": completions // generations, "completions_per_cycle": completions,
        "steps_per_cycle": cycle, "steps_per_generation": steps_per_generation, "num_iterations": config.ppo_epochs,
        "per_device_train_batch_size": per_device, "activation_checkpointing": bool(spec.get("grpo_checkpointing")),
        "cycles_measured": len(cycle_s), "cycle_seconds": cycle_s, "step_seconds": steps_of,
        "median_cycle_s": median_cycle, "seconds_per_sample": median_cycle / completions,
        "phases": {"generate_and_score": {**_summary(generate or []), "peak_gib": max(p[0] for p in peaks_of) / GIB},
                   "update": {**_summary(update), "peak_gib": max((x for p in peaks_of for x in p[1:]), default=0) / GIB or None}},
        "phase_source": "optimizer-step times from a TrainerCallback: generation + scoring = a cycle's first step - the median other step",
        # train_grpo loads with the package's auto choices: note when they differ from the benchmark's
        "device": str(auto_device), "dtype": info["dtype"],
        # TRL logs the completions' figures once per cycle (on its first step)
        "mean_completion_tokens": statistics.mean(lengths[sizes["warmup"]:]) if lengths[sizes["warmup"]:] else None,
        "mean_reward": statistics.mean(rewards[sizes["warmup"]:]) if rewards[sizes["warmup"]:] else None,
    }


PART_FUNCTIONS = {"eval": part_eval, "sft": part_sft, "ppo": part_ppo, "grpo": part_grpo}


def _profile(step: Callable[[], Any], path: Path, meter: Meter) -> dict:
    """One more step under ``torch.profiler``; the operator table goes to ``path``, and the seconds of the
    ``ppo/<phase>`` ranges the step labels itself (``timing.phase``) into the JSON."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if meter.cuda else [])
    with profile(activities=activities) as prof:
        step()
    averages = prof.key_averages()
    sort = "self_device_time_total" if meter.cuda else "self_cpu_time_total"
    table = averages.table(sort_by=sort, row_limit=40)
    phases = averages.table(sort_by="cpu_time_total", row_limit=12)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# torch {torch.__version__}, threads {torch.get_num_threads()}\n\n## by total time\n{phases}\n\n"
                    f"## by self time\n{table}\n")
    labelled = {e.key.removeprefix("ppo/"): e.cpu_time_total / 1e6 for e in averages if e.key.startswith("ppo/")}
    return {"file": str(path), "phases": labelled}


def run_worker(part: str, spec: dict) -> dict:
    """One part in this process: threads, the meter; returns its figures. The part's own prints
    (TRL's log rows when its progress bars are off) go to stderr: stdout carries the table."""
    import torch

    from nlu_helpers import models

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = models.pick_device(spec["device"])
    meter = Meter(device)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with contextlib.redirect_stdout(sys.stderr):
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
        if spec["device"] == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""  # the loaders' "auto" (train_grpo's) then picks the CPU too
        completed = subprocess.run(command, cwd=ROOT, env=env)
        if completed.returncode != 0:
            raise RuntimeError(f"benchmark part {part!r} failed (exit status {completed.returncode}); see its output above")
        return json.loads(result_file.read_text())


# =======================================================================================
# Rates, bounds and targets
# =======================================================================================


def probe_shapes(result: dict) -> list[tuple[int, int, int]]:
    """``(tokens, in, out)`` of the matmuls the heaviest measured work runs: the PPO update's mini-batch
    (every decoder linear layer at its token count, the LM head at its answer tokens), else an eval batch."""
    ppo, ev = result.get("ppo"), result.get("eval")
    if ppo:
        info, work = ppo["model"], ppo["update_work"]
        tokens, head_tokens = work["minibatch_tokens"], work["minibatch_answer_tokens"]
    elif ev:
        info = ev["model"]
        tokens, head_tokens = round(ev["batch_size"] * ev["mean_prompt_tokens"]), ev["batch_size"]
    else:
        part = result.get("sft") or result.get("grpo")
        info = part["model"]
        tokens = head_tokens = 1024
    layout = info["linear_shapes"]
    return [(max(tokens, 1), i, o) for i, o, _n in layout["layers"]] + [(max(head_tokens, 1), *layout["head"])]


def measure_rates(shapes: list[tuple[int, int, int]], *, device, dtype, repeats: int = PROBE_REPEATS) -> dict:
    """This machine's matmul peak on ``shapes`` and its copy bandwidth, each the best of ``repeats``."""
    from benchmarks.eval_speed import copy_probe, matmul_probe

    matmul = matmul_probe(shapes, dtype=dtype, device=device, repeats=repeats)
    copy = copy_probe(device=device, repeats=repeats)
    return {"peak_flops": matmul["peak_flops"], "bandwidth_bytes_per_s": copy["bandwidth_bytes_per_s"],
            "matmul": matmul, "copy": copy}


def update_flops(info: dict, work: dict) -> float:
    """FLOPs the PPO update does, counted on real tokens: a lower bound on what the hardware ran.

    Per epoch: forward and input gradients through the frozen decoder weights (4 per weight per token:
    no weight gradients), LoRA's forward, input and weight gradients (6), the LM head on answer tokens
    only (forward + input gradient, 4), causal attention (scores and values, forward + backward:
    6 x width per layer per pair of positions that the causal mask keeps, about L^2 / 2 for a row of L).
    """
    per_epoch = (4 * info["layer_matmul_parameters"] * work["tokens"]
                 + 6 * info["lora_parameters"] * work["tokens"]
                 + 4 * info["lm_head_parameters"] * work["answer_tokens"]
                 + 6 * info["num_hidden_layers"] * info["attention_width"] * work["sum_squared_lengths"])
    return work["epochs"] * per_epoch


def bounds(result: dict, rates: dict) -> dict:
    """Decoding's bandwidth bound, the update's utilisation, the scoring floor (figures that exist);
    ``flags`` names every figure above 100% of its bound."""
    bw, peak = rates["bandwidth_bytes_per_s"], rates["peak_flops"]
    figures: dict[str, Any] = {"bandwidth_bytes_per_s": bw, "peak_flops": peak, "rates_source": rates["source"],
                               "probe": rates.get("probe"), "flags": []}
    ppo = result.get("ppo")
    if ppo:
        info = ppo["model"]
        batch, prompt, steps = ppo["samples_per_step"], ppo["prompt_width"], max(ppo["response_width"], 1)
        context = prompt + steps / 2  # mean tokens in the cache over the decode steps
        step_bytes = info["weight_bytes_read_per_decode_step"] + batch * context * info["kv_bytes_per_token"]
        bound_step = step_bytes / bw
        prefill = max(2 * info["matmul_parameters"] * batch * prompt / peak, info["weight_bytes_read_per_decode_step"] / bw)
        rollouts = {"decode": ppo["phases"]["rollout"]["median_s"]}
        if ppo.get("static_cache"):  # its rollout also runs the one forward pass that replaces generation's kept states
            rollouts["decode_static"] = ppo["static_cache"]["phases"]["rollout"]["median_s"]
        for key, generate in rollouts.items():
            figures[key] = {
                "bytes_per_step": step_bytes, "bound_ms_per_step": 1e3 * bound_step,
                "bound_tokens_per_s": batch / bound_step,
                "measured_ms_per_step": 1e3 * generate / steps,  # prefill included
                "generation_bound_s": prefill + steps * bound_step, "generation_measured_s": generate,
                "fraction_of_bound": (prefill + steps * bound_step) / generate,
            }
            if figures[key]["fraction_of_bound"] > 1:
                figures["flags"].append(f"the rollout ({key}) ran faster than its bound: the probed rates are no bound for this run")
        update = ppo["phases"]["update"]["median_s"]
        flops = 6 * info["matmul_parameters"] * ppo["update_tokens"]
        done = update_flops(info, ppo["update_work"]) if "update_work" in ppo else None
        figures["update"] = {"model_flops": flops, "seconds_at_peak": flops / peak, "measured_s": update,
                             # the 6N convention (a full fine-tune's work) and LoRA's 4N: comparisons, not bounds
                             "mfu": flops / update / peak, "mfu_lora_4n": flops * 4 / 6 / update / peak}
        if done is not None:
            figures["update"].update({"flops_done": done, "achieved_flops_per_s": done / update, "utilisation": done / update / peak,
                                      "exceeds_peak": done / update > peak})
            if done / update > peak:
                figures["flags"].append(f"the update did {done / update / 1e12:.3g} TFLOP/s, above the peak of "
                                        f"{peak / 1e12:.3g}: the probe was no bound (contended while probing?)")
    ev = result.get("eval")
    if ev:
        floor = ev["score"]["forward_flops"] / peak
        figures["score_floor"] = {"seconds": floor, "examples_per_s": ev["rows"] / floor,
                                  "fraction_of_floor": ev["score"]["examples_per_s"] / (ev["rows"] / floor)}
        if figures["score_floor"]["fraction_of_floor"] > 1:
            figures["flags"].append("scoring-mode evaluation ran faster than its FLOPs floor: the peak is no bound for this run")
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


def _probe_lines(probe: dict | None) -> list[str]:
    if not probe:
        return []
    m, c = probe["matmul"], probe["copy"]
    best = next(s for s in m["shapes"] if s["shape"] == m["peak_shape"])
    t, i, o = best["shape"]
    shapes = ", ".join(f"[{t}x{i}]@[{i}x{o}] {s['best_flops'] / 1e12:.3g}" for s in m["shapes"] for t, i, o in [s["shape"]])
    return [f"  rate probe ({m['dtype']} on {m['device']}, best of {m['repeats']} repeats, TFLOP/s per shape): {shapes}",
            (f"    peak {m['peak_flops'] / 1e12:.3g} TFLOP/s on [{t}x{i}]@[{i}x{o}]; its repeats worst/median/best "
             f"{best['worst_flops'] / 1e12:.3g}/{best['median_flops'] / 1e12:.3g}/{best['best_flops'] / 1e12:.3g} "
             f"({100 * best['relative_spread']:.0f}% spread; {100 * m['max_relative_spread']:.0f}% at most over shapes); "
             f"copy {c['bandwidth_bytes_per_s'] / 1e9:.3g} GB/s best, {100 * c['relative_spread']:.0f}% spread")]


def format_table(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"model {meta['model']} ({meta['dtype']}, {meta['device']}: {meta['hardware']}), preset {meta['preset']}, "
        f"task {meta['task']}, {meta['threads']} threads; {'in one process' if meta['in_process'] else 'one process per part'}",
        f"note: {MACHINE_NOTE}",
        "",
        f"{'part':<16}{'figure':<38}{'value':>12}  {'peak GiB':>8}",
    ]

    def row(part: str, figure: str, value: Any, peak: Any = None, digits: int = 2) -> None:
        lines.append(f"{part:<16}{figure:<38}{_f(value, digits):>12}  {_f(peak):>8}")

    ev = result.get("eval")
    if ev:
        for mode in ("generate", "score"):
            row(f"eval {mode}", f"examples/s ({ev['rows']} rows, batch {ev['batch_size']})", ev[mode]["examples_per_s"], ev[mode]["peak_gib"])
        row("eval", "process peak", None, ev["peak_gib"])
    sft = result.get("sft")
    if sft:
        row("sft", f"steps/s ({sft['sequences_per_step']} seq/step)", sft["steps_per_s"], sft.get("step_peak_gib"), 3)
        row("sft", "tokens/s", sft["tokens_per_s"], None, 1)
        row("sft", "trainable parameters", sft["trainable_parameters"])
        row("sft", "process peak", None, sft["peak_gib"])
    ppo = result.get("ppo")
    if ppo:
        memory = ppo.get("memory") or {}
        row("ppo", f"s/step ({ppo['samples_per_step']} samples)", ppo["median_step_s"], memory.get("step_peak_gib"))
        for name, label in (("rollout", "rollout (generation)"), ("reward", "reward"),
                            ("reference", "log-probs: policy heads, reference"), ("advantages", "KL rewards, GAE, whiten"),
                            ("update", "update"), ("other", "rest (KL controller, log)")):
            row("ppo", f"  {label} s", ppo["phases"][name]["median_s"])
        row("ppo", "step without update (peak)", None, memory.get("no_update_peak_gib"))
        row("ppo", "s per generated sample", ppo["seconds_per_sample"], None, 3)
        row("ppo", "trainable parameters (+ value)", ppo["trainable_parameters"])
        row("ppo", "process peak", None, ppo["peak_gib"])
        static = ppo.get("static_cache")
        if static:
            row("ppo static", "s/step", static["median_step_s"])
            for name in ("rollout", "reference", "update"):
                row("ppo static", f"  {name} s", static["phases"][name]["median_s"])
            row("ppo static", "first rollout s (compiles on a GPU)", static["first_rollout_s"])
            row("ppo static", f"same samples ({static['rows_compared']} rows)", static["same_samples"])
    grpo = result.get("grpo")
    if grpo:
        label = f"s/cycle ({grpo['completions_per_cycle']} compl.{', ckpt' if grpo['activation_checkpointing'] else ''})"
        row("grpo (TRL)", label, grpo["median_cycle_s"], grpo["peak_gib"])
        for name, label in (("generate_and_score", "generation, reward, old log-p s"), ("update", "update")):
            row("grpo (TRL)", f"  {label}" + ("" if label.endswith(" s") else " s"), grpo["phases"][name]["median_s"], grpo["phases"][name]["peak_gib"])
        row("grpo (TRL)", "s per generated sample", grpo["seconds_per_sample"], None, 3)
        if grpo["dtype"] != meta["dtype"]:
            lines.append(f"  (GRPO ran in {grpo['dtype']}: train_grpo loads with the package's auto dtype)")
    b = result.get("bounds") or {}
    if b:
        lines += ["", f"bounds against {b['bandwidth_bytes_per_s'] / 1e12:.3g} TB/s and {b['peak_flops'] / 1e12:.3g} TFLOP/s ({b['rates_source']}):"]
        lines += _probe_lines(b.get("probe"))
        for key, label in (("decode", "decoding"), ("decode_static", "decoding, static cache")):
            if key in b:
                d = b[key]
                lines.append(f"  {label}: {d['bytes_per_step'] / 1e9:.3g} GB read per decode step -> bound {d['bound_ms_per_step']:.3g} ms/step "
                             f"({d['bound_tokens_per_s']:.0f} tokens/s); measured {d['measured_ms_per_step']:.3g} ms/step incl. prefill: "
                             f"the rollout runs at {100 * d['fraction_of_bound']:.1f}% of its bound's speed")
        if "update" in b:
            u = b["update"]
            if "flops_done" in u:
                lines.append(f"  PPO update: {u['flops_done']:.3g} FLOPs done (frozen weights forward + input gradients, LoRA, "
                             f"LM head on answers, causal attention) in {u['measured_s']:.3g} s = {u['achieved_flops_per_s'] / 1e12:.3g} "
                             f"TFLOP/s: {100 * u['utilisation']:.1f}% of peak")
            lines.append(f"  PPO update by convention: 6 x params x tokens = {u['model_flops']:.3g} FLOPs -> MFU {100 * u['mfu']:.2f}% "
                         f"(LoRA's 4 x params: {100 * u['mfu_lora_4n']:.2f}%; both count weight gradients LoRA does not "
                         f"compute and the LM head at every position, so they can pass 100%: not bounds)")
        if "score_floor" in b:
            s = b["score_floor"]
            lines.append(f"  scoring-mode eval: forward FLOPs floor {s['examples_per_s']:.1f} examples/s; measured is "
                         f"{100 * s['fraction_of_floor']:.1f}% of it")
        for flag in b.get("flags") or []:
            lines.append(f"  FLAG: {flag}")
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
    parser.add_argument("--static-cache", action="store_true",
                        help="PPO again with PPOConfig.static_cache (fixed-size KV cache; compiled decoding on a GPU): samples compared, steps timed")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--bandwidth-tbs", type=float, help=f"memory bandwidth for the bounds, TB/s (GPU default {H100_BANDWIDTH_TBS}: H100 SXM; CPU default: probed)")
    parser.add_argument("--peak-tflops", type=float, help=f"peak FLOP/s for the bounds, TFLOP/s (GPU default {H100_BF16_TFLOPS}: H100 SXM bf16 dense; CPU default: probed)")
    parser.add_argument("--probe-repeats", type=int, default=PROBE_REPEATS, help=f"repeats of the rate probes; the best counts (default {PROBE_REPEATS})")
    parser.add_argument("--weights-dir", help="where random-weight architectures are written (default: the workbook's cache)")
    parser.add_argument("--json", help="write the figures here (default runs/benchmarks/<model>-<preset>-<device>.json)")
    parser.add_argument("--profile", metavar="DIR", help="profile one extra PPO step with torch.profiler; table to DIR/ppo-profile.txt")
    parser.add_argument("--in-process", action="store_true", help="run every part in this process (faster; memory peaks then mix)")
    parser.add_argument("--worker", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.preset = "quick"
    if args.probe_repeats < 1:
        parser.error(f"--probe-repeats must be >= 1, got {args.probe_repeats}")
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
    if args.threads:
        torch.set_num_threads(args.threads)
    device = models.pick_device(args.device)
    dtype = models.pick_dtype(args.dtype, device)
    started = time.perf_counter()
    random_weights = is_architecture(args.model)
    load = str(random_model_folder(args.model, device=device, dtype=dtype, root=args.weights_dir)) if random_weights else args.model
    spec = {"model": args.model, "load": load, "task": args.task, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "sizes": asdict(sizes), "threads": args.threads, "profile_dir": args.profile, "grpo_checkpointing": args.grpo_checkpointing,
            "static_cache": args.static_cache}
    hardware = models.describe_hardware()
    result: dict[str, Any] = {"meta": {
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model, "random_weights": random_weights, "weights": load if random_weights else None,
        "preset": sizes.name, "task": args.task,
        "parts": parts, "device": str(device), "dtype": spec["dtype"], "threads": args.threads or torch.get_num_threads(),
        "hardware": hardware["name"], "hardware_info": hardware, "in_process": args.in_process, "sizes": asdict(sizes),
        "versions": _versions(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "note": MACHINE_NOTE,
    }}
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", Path(args.model).name if os.sep in args.model else args.model).strip("-")
    path = Path(args.json) if args.json else ROOT / "runs" / "benchmarks" / f"{slug}-{sizes.name}-{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        result[part] = None
    for part in parts:
        print(f"[benchmarks.run] {part} ...", file=sys.stderr, flush=True)
        result[part] = run_part(part, spec, args.in_process)
        path.write_text(json.dumps({**result, "unfinished": True}, indent=1))  # a run cut short keeps its finished parts
    info = next((result[p]["model"] for p in ("ppo", "eval", "sft", "grpo") if result[p]), None)
    result["model"] = info
    result["meta"]["ppo_config"] = ppo_config(spec).to_dict()
    if info:
        print("[benchmarks.run] rate probes ...", file=sys.stderr, flush=True)
        probe = measure_rates(probe_shapes(result), device=device, dtype=dtype, repeats=args.probe_repeats)
        given = device.type == "cuda" or (args.bandwidth_tbs and args.peak_tflops)
        if given:
            source = "flags" if args.bandwidth_tbs and args.peak_tflops else "H100 SXM defaults (and flags)"
            bandwidth, peak = (args.bandwidth_tbs or H100_BANDWIDTH_TBS) * 1e12, (args.peak_tflops or H100_BF16_TFLOPS) * 1e12
        else:
            source = f"probed here: {spec['dtype']} matmuls of the update's shapes and a 256 MiB copy, best of {args.probe_repeats}"
            bandwidth = args.bandwidth_tbs * 1e12 if args.bandwidth_tbs else probe["bandwidth_bytes_per_s"]
            peak = args.peak_tflops * 1e12 if args.peak_tflops else probe["peak_flops"]
        rates = {"bandwidth_bytes_per_s": bandwidth, "peak_flops": peak, "source": source, "probe": probe}
        result["bounds"] = bounds(result, rates)
    else:
        result["bounds"] = None
    result["targets"] = targets(result)
    result["meta"]["seconds_total"] = time.perf_counter() - started
    print(format_table(result))
    path.write_text(json.dumps(result, indent=1))
    print(f"figures written to {path}")
    return result


if __name__ == "__main__":
    main()
