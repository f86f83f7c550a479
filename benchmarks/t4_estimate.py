"""Expected minutes per notebook of the ``colab-t4`` profile on a Colab T4: an ESTIMATE, scaled from measured figures.

    .venv/bin/python -m benchmarks.t4_estimate [--profile colab-t4] [--gpu-check gpu-check.json] [--json PATH]

Nothing here ran on a T4. The work each notebook does under the profile is counted from the profile
(``runner.load_profile``), the notebooks' settings (``stages.notebook_settings``) and parameters cells, and
the real GLUE split sizes: evaluation passes (both modes, zero- and 5-shot, calibration, 01's answer-format
comparison), SFT and PPO steps, the encoder's epochs. Notebooks 03 and 04 read their zero-shot "before" from
02's results (the runner runs 02 first, on the same rows). Demonstrations sit in the prompts' shared prefix,
which the prefix cache runs once per batch (a 5-shot prompt is ~3-4x a zero-shot one: the template comes once).
Not counted: installs, hub downloads, checkpoint writes, multi-task runs, answers that stop before the cap.
Each pass then costs the slowest of three floors:

  compute  FLOPs / (T4 fp16 tensor peak 65 TFLOP/s x UTILISATION); FLOPs = 2 x params x tokens forward,
           4 x for a LoRA training pass (the frozen base needs no weight gradients), 6 x for full fine-tuning
  memory   bytes read (weights, KV cache, optimizer state) / 320 GB/s
  host     the Python and dispatch time of one pass, MEASURED here

On a GPU the host enqueues kernels asynchronously, and a 0.5B model's kernels for one token are so small
that the device finishes each before the host has issued the next: a decode step costs the host's
per-step time, not the GPU's. That time is measured on this CPU with transformers' ``generate`` on a
random-weight model of the profile model's depth (its layers set the kernel count) at a tiny width,
batch 16, one thread, so compute is negligible: (t(32 new tokens) - t(16)) / 16, best of 3. A LoRA
training pass (forward, backward, AdamW step) is measured the same way (the encoder's: scaled by its 12
layers). CUDA launches add to a pass's host time and a Colab host is slower than most CPUs: optimistic figures.

``--gpu-check FILE`` (scripts/gpu_check.py's gpu-check.json) calibrates the model with its bench-t4 part
(qwen2.5-0.5b, fp16, 4-bit, measured on a real GPU): each kind of work (PPO step, SFT step, evaluation
example per mode) gets the factor measured / this model's prediction for the same work at that GPU's
measured rates. The measured figures are thereby scaled by the T4-to-that-GPU rate ratio where the work is
device-bound, and kept where it is host-bound.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from types import SimpleNamespace

import torch

T4_FP16_FLOPS = 65e12  # FLOP/s, T4 fp16 tensor-core peak (NVIDIA datasheet)
T4_BANDWIDTH = 320e9  # bytes/s, T4 GDDR6 (datasheet)
UTILISATION = 0.25  # assumed share of that peak HF training and prefill reach on a T4 (bitsandbytes dequantisation included)
STARTUP_S = 30.0  # assumed per notebook run: kernel start, imports, loading the cached model and data
# GLUE split sizes (the datasets' own counts; the hub is not reachable here)
SPLITS = {"sst2": {"train": 67_349, "validation": 872}, "rte": {"train": 2_490, "validation": 277},
          "mrpc": {"train": 3_668, "validation": 408}}
# Prompt tokens: (shared prefix before the row, the row's own part with the closing "Assistant: <Judgement>").
# The template measured with the embedded tokenizer on nlu_helpers.samples rows (Qwen's BPE is alike); the row
# parts from the validation splits' mean lengths (SST-2 ~19 words, RTE ~43 + 9, MRPC 2 x ~22) at ~1.3 tokens/word.
PROMPT = {"sst2": (62, 33), "rte": (68, 78), "mrpc": (62, 67)}
ANSWER = 7  # " Positive </Judgement>" + end of sequence, measured with the embedded tokenizer
# bert-base-uncased: wordpieces per training row with [CLS]/[SEP] (train means; SST-2's rows are ~9-word phrases)
ENCODER_TOKENS = {"sst2": 13, "rte": 68, "mrpc": 54}
ENCODER_MATMUL, ENCODER_PARAMS, ENCODER_LAYERS = 85e6, 110e6, 12  # bert-base: 110M, 85M outside the embeddings
PAD = 1.3  # training batches pad to their longest row (evaluation sorts rows by length and barely pads)


@dataclass
class Job:
    """``count`` alike passes, each ``flops`` and ``bytes`` of device work and one host pass (``host`` x ``host_scale``)."""

    kind: str  # "generate", "score", "sft", "ppo", "encoder": what a --gpu-check figure calibrates
    count: float
    flops: float
    bytes: float
    host: str  # "forward" or "train": which measured host time one pass costs
    host_scale: float = 1.0

    def seconds(self, flops_per_s: float, bytes_per_s: float, host: dict[str, float]) -> float:
        """Each pass waits for the slowest of its compute, its memory traffic and the host issuing it."""
        return self.count * max(self.flops / flops_per_s, self.bytes / bytes_per_s, host[self.host] * self.host_scale)


def _shape(model: str, four_bit: bool) -> dict:
    """Matmul parameters in the blocks and head, weight bytes (4-bit blocks or fp16), KV bytes per token."""
    from nlu_helpers import architectures as arch

    values, counts = arch.architecture(model), arch.parameter_count(model)
    head = values["vocab_size"] * values["hidden_size"]
    weights = arch.estimate_memory(model, batch_size=1, seq_len=1, dtype="fp16", load_in_4bit=four_bit).weights * arch.GIB
    kv = 2 * values["num_hidden_layers"] * values["num_key_value_heads"] * values["hidden_size"] // values["num_attention_heads"] * 2
    return dict(blocks=counts["blocks"], head=head, weights=weights, kv=kv, layers=values["num_hidden_layers"])


def evaluation(m: dict, kind: str, rows: int, batch: int, shared: int, own: int, new_tokens: int = 0) -> list[Job]:
    """One evaluation pass (or rollout): per batch one prefill (the shared prefix once, each row's own part), then
    ``new_tokens`` decode steps, each reading the weights and the batch's KV cache (scoring mode: none)."""
    batches = math.ceil(rows / batch)
    jobs = [Job(kind, batches, 2 * m["blocks"] * (shared + batch * own), m["weights"], "forward")]
    if new_tokens:
        context = shared + own + new_tokens / 2
        jobs.append(Job(kind, batches * new_tokens, 2 * (m["blocks"] + m["head"]) * batch, m["weights"] + m["kv"] * batch * context, "forward"))
    return jobs


class Counting:
    """One notebook run on one task: its settings ``s``, parameters ``p``, and the jobs and counts it adds up."""

    def __init__(self, task: str | None, p: dict, s, counted: Counter, layers: int):
        self.task, self.p, self.s, self.counted, self.jobs, self.layers = task, p, s, counted, [], layers
        self.rows = min(p.get("eval_limit") or math.inf, SPLITS[task]["validation"]) if task else 0  # rows per evaluation

    def evaluate(self, kind: str, rows: int, batch: int, shots: int = 0, four_bit: bool = False) -> None:
        """One ``evaluation.evaluate`` call: ``shots`` demonstrations join the shared prefix (the prefix cache runs it once)."""
        shared, own = PROMPT[self.task]
        self.counted[f"rows {'generated' if kind == 'generate' else 'scored'}"] += rows
        self.jobs += evaluation(_shape(self.p["model"], four_bit), kind, rows, batch, shared + shots * (own + ANSWER), own,
                                getattr(self.s, "max_new_tokens", 8) if kind == "generate" else 0)


def _prompt_design(c: Counting) -> None:
    """01: the answer-format comparison, two styles on the playground's rows (at most ``format_rows``)."""
    for _style in ("placeholder", "options"):
        c.evaluate("generate", min(c.p["format_rows"], c.p["playground_rows"]), c.s.batch_size)


def _zero_few_shot(c: Counting) -> None:
    """02: zero- and k-shot in every mode, scoring again with calibration; the tilt check (20 rows, 4 demonstration sets)."""
    k = c.p["k"]
    for shots in [0] + ([k] if k else []):
        for mode in c.s.modes:
            for _calibrated in range(1 + (mode == "score" and c.s.calibrate)):
                c.evaluate(mode, c.rows, c.s.batch_size, shots)
    for shots in ((0, k, k, k) if k else ()):  # none, the drawn ones, all of one label word (x2)
        c.evaluate("score", 20, c.s.batch_size, shots)


def _lora_sft(c: Counting) -> None:
    """03: SFT steps of batch x accumulation rows, then the tuned model in every mode (zero-shot: read from 02's results)."""
    s, m = c.s, _shape(c.p["model"], c.s.load_in_4bit)
    per_step = s.batch_size * s.gradient_accumulation_steps
    rows = min(c.p["train_limit"] or math.inf, SPLITS[c.task]["train"])
    steps = c.p["max_steps"] or math.ceil(s.epochs * rows / per_step)
    tokens = s.batch_size * (sum(PROMPT[c.task]) + ANSWER) * PAD  # one micro-batch
    c.jobs.append(Job("sft", steps * s.gradient_accumulation_steps, 4 * (m["blocks"] + m["head"]) * tokens, 3 * m["weights"], "train"))
    c.counted["SFT steps"] += steps
    for mode in s.modes:
        c.evaluate(mode, c.rows, s.eval_batch_size, four_bit=s.load_in_4bit)


def ppo_step(m: dict, cfg, shared: int, own: int, new: float) -> list[Job]:
    """One PPO step: the rollout (prefill + decode), the reference's forward and the update's passes, per mini-batch."""
    tokens = cfg.batch_size * (shared + own + new)
    batches = cfg.prompts_per_step / cfg.batch_size
    return evaluation(m, "ppo", cfg.prompts_per_step, cfg.prompts_per_step, shared, own, round(new)) + [
        Job("ppo", batches, 2 * m["blocks"] * tokens, m["weights"], "forward"),
        Job("ppo", cfg.ppo_epochs * batches, 4 * m["blocks"] * tokens, 3 * m["weights"], "train")]


def _ppo(c: Counting) -> None:
    """04: PPO steps (answers run to the mean of the preset's cap), then the policy in every mode (start: read from 02)."""
    from nlu_helpers import ppo

    cfg = ppo.preset(c.p["preset"])
    rows = min(c.s.train_limit or math.inf, SPLITS[c.task]["train"])
    steps = c.p["ppo_steps"] or math.ceil(cfg.passes * rows / cfg.prompts_per_step)
    step = ppo_step(_shape(c.p["model"], cfg.load_in_4bit), cfg, *PROMPT[c.task], sum(cfg.max_new_tokens) / 2)
    c.jobs += [Job(j.kind, steps * j.count, j.flops, j.bytes, j.host) for j in step]
    c.counted["PPO steps"] += steps
    for mode in c.s.modes:
        c.evaluate(mode, c.rows, c.s.eval_batch_size)


def _encoder(c: Counting) -> None:
    """05: full fine-tuning of bert-base (AdamW reads and writes 28 bytes per parameter a step), then its evaluation."""
    rows = min(c.p["train_limit"] or math.inf, SPLITS[c.task]["train"])
    steps = math.ceil(c.s.epochs * math.ceil(rows / c.s.batch_size))
    tokens = c.s.batch_size * ENCODER_TOKENS[c.task] * PAD
    c.jobs.append(Job("encoder", steps, 6 * ENCODER_MATMUL * tokens, 28 * ENCODER_PARAMS, "train", ENCODER_LAYERS / c.layers))
    c.jobs.append(Job("encoder", math.ceil(c.rows / 64), 2 * ENCODER_MATMUL * 64 * ENCODER_TOKENS[c.task], 2 * ENCODER_PARAMS,
                      "forward", ENCODER_LAYERS / c.layers))
    c.counted["encoder steps"] += steps
    c.counted["rows scored"] += c.rows


COUNTERS = {"01_prompt_design": _prompt_design, "02_zero_few_shot": _zero_few_shot, "03_lora_sft": _lora_sft, "04_ppo": _ppo,
            "05_encoder_baseline": _encoder, "06_results": lambda c: None}


def notebook_work(profile: str = "colab-t4") -> dict[str, dict]:
    """Per notebook: ``jobs`` and ``counted`` (runs, rows evaluated, steps), from the profile, settings and parameters.

    A notebook's parameters are its parameters cell's defaults under the profile's values, as the runner gives them.
    """
    import papermill

    from nlu_helpers import runner, stages
    from nlu_helpers.tasks import get_task

    content = runner.load_profile(profile)
    tasks = [get_task(t).name for t in content["parameters"].get("tasks") or [content["parameters"]["task"]]]
    unknown = sorted(set(tasks) - set(SPLITS))
    if unknown:
        raise ValueError(f"no split sizes for tasks {unknown}; known: {', '.join(SPLITS)}")
    layers = _shape(content["parameters"]["model"], False)["layers"]  # the host figures' depth
    work = {}
    for path in runner.notebook_paths():
        nb, declared = path.stem, papermill.inspect_notebook(str(path))
        given = {**content["parameters"], **(content["notebooks"].get(nb) or {})}
        p = {k: ast.literal_eval(v["default"]) for k, v in declared.items()} | {k: v for k, v in given.items() if k in declared}
        s = stages.notebook_settings(profile, nb)
        runs = (tasks if "each" in runner.notebook_runs(content, nb) else tasks[:1]) if "task" in declared else [None]
        counted, jobs = Counter(runs=len(runs)), []
        for task in runs:
            c = Counting(task, p, s, counted, layers)
            COUNTERS[nb](c)
            jobs += c.jobs
        work[nb] = {"jobs": jobs, "counted": dict(counted)}
    return work


def _tiny(model: str, layers: int | None):
    """The architecture's depth (the host's kernel count) at a tiny width: compute costs nothing next to dispatch."""
    from transformers import AutoModelForCausalLM

    from nlu_helpers.architectures import config_for

    config = config_for(model)
    config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim = 64, 2, 1, 32
    config.intermediate_size, config.vocab_size = 128, 1024
    config.num_hidden_layers = layers or config.num_hidden_layers
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def host_decode_seconds(model: str = "qwen2.5-0.5b", layers: int | None = None, batch: int = 16, prompt: int = 64) -> float:
    """Seconds per decode step: (t(32 new) - t(16 new)) / 16 with ``generate`` forced to exactly that many, best of 3."""
    net, ids = _tiny(model, layers), torch.randint(3, 1024, (batch, prompt))

    def best(new: int) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            with torch.no_grad():
                net.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0,
                             min_new_tokens=new, max_new_tokens=new)
            times.append(time.perf_counter() - started)
        return min(times)

    best(2)  # warm-up
    return (best(32) - best(16)) / 16


def host_train_seconds(model: str = "qwen2.5-0.5b", layers: int | None = None, batch: int = 8, length: int = 64) -> float:
    """Seconds of one LoRA training pass (forward, backward, AdamW step) at a tiny width, best of 3 after a warm-up."""
    from nlu_helpers import models

    net = models.add_lora(_tiny(model, layers), models.lora_config()).train()
    optimizer = torch.optim.AdamW([q for q in net.parameters() if q.requires_grad], lr=1e-4)
    ids, times = torch.randint(3, 1024, (batch, length)), []
    for _ in range(4):
        started = time.perf_counter()
        net(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return min(times[1:])


def calibration(path: str, host: dict[str, float]) -> dict[str, float]:
    """measured / predicted per kind of work, for gpu-check's bench-t4 figures at that GPU's measured rates."""
    record = json.load(open(path))
    if record["meta"].get("dry_run"):
        raise ValueError(f"{path} is a dry run (CPU, tiny model): its figures say nothing about a GPU")
    try:
        rates, bench = record["parts"]["env"]["figures"]["rates"], record["parts"]["bench-t4"]["figures"]["parts"]
        rate = dict(flops_per_s=rates["fp16_matmul_flops"] * UTILISATION, bytes_per_s=rates["copy_bytes_per_s"], host=host)
        ppo, sft, ev = bench["ppo"], bench["sft"], bench["eval"]
    except KeyError as error:
        raise ValueError(f"{path} lacks {error}: the env part's rates and bench-t4's ppo, sft and eval figures are needed") from None
    m = _shape("qwen2.5-0.5b", True)  # bench-t4's model: the colab-t4 shape
    step = ppo_step(m, SimpleNamespace(**ppo["config"]), 0, ppo["prompt_width"], ppo["response_width"])
    micro = sft["tokens_per_step"] / sft["gradient_accumulation_steps"]
    sft_step = Job("sft", sft["gradient_accumulation_steps"], 4 * (m["blocks"] + m["head"]) * micro, 3 * m["weights"], "train")
    factors = {"ppo": ppo["median_step_s"] / sum(j.seconds(**rate) for j in step),
               "sft": sft["median_step_s"] / sft_step.seconds(**rate)}
    for mode in ("generate", "score"):
        new = ev[mode].get("max_new_tokens", 8) if mode == "generate" else 0
        jobs = evaluation(m, mode, ev["rows"], ev["batch_size"], 0, round(ev["mean_prompt_tokens"]), new)
        factors[mode] = ev["rows"] / ev[mode]["examples_per_s"] / sum(j.seconds(**rate) for j in jobs)
    return factors


def estimate(profile: str = "colab-t4", gpu_check: str | None = None, host: dict[str, float] | None = None) -> dict:
    """Minutes per notebook on a T4 with what was counted and measured (``host`` given: no measurement)."""
    from nlu_helpers import runner

    if host is None:  # measured on one thread: one host thread dispatches a GPU's kernels
        model, threads = runner.load_profile(profile)["parameters"]["model"], torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            host = {"forward": host_decode_seconds(model), "train": host_train_seconds(model)}
        finally:
            torch.set_num_threads(threads)
    factors = calibration(gpu_check, host) if gpu_check else {}
    rate = dict(flops_per_s=T4_FP16_FLOPS * UTILISATION, bytes_per_s=T4_BANDWIDTH, host=host)
    rows = {nb: {"counted": w["counted"], "minutes": (w["counted"]["runs"] * STARTUP_S + sum(
        j.seconds(**rate) * factors.get(j.kind, 1.0) for j in w["jobs"])) / 60} for nb, w in notebook_work(profile).items()}
    return {"profile": profile, "estimate": True, "notebooks": rows, "total_minutes": sum(r["minutes"] for r in rows.values()),
            "host_seconds": host, "calibration": factors, "assumptions": dict(
                t4_fp16_flops=T4_FP16_FLOPS, utilisation=UTILISATION, t4_bandwidth=T4_BANDWIDTH, startup_s=STARTUP_S, pad=PAD)}


def print_table(result: dict) -> None:
    print(f"ESTIMATE (not a T4 run): expected minutes per notebook of the {result['profile']} profile on a Colab T4")
    print(f"{'notebook':<22}{'work counted':<70}{'minutes':>8}")
    for nb, row in result["notebooks"].items():
        counted = ", ".join(f"{v:,} {'run' if k == 'runs' and v == 1 else k}" for k, v in row["counted"].items() if v)
        print(f"{nb:<22}{counted:<70}{row['minutes']:>8.1f}")
    print(f"{'total':<92}{result['total_minutes']:>8.1f}")
    h, cal = result["host_seconds"], result["calibration"]
    print(f"assumptions: pass = max(FLOPs / ({T4_FP16_FLOPS / 1e12:.0f} TFLOP/s x {UTILISATION:.0%}), bytes / "
          f"{T4_BANDWIDTH / 1e9:.0f} GB/s, host); host measured here: decode step {h['forward'] * 1e3:.1f} ms, LoRA train pass "
          f"{h['train'] * 1e3:.1f} ms; {STARTUP_S:.0f} s start-up per run; answers to the cap; GLUE split sizes; "
          + ("calibrated by " + ", ".join(f"{k} x{v:.2f}" for k, v in cal.items()) if cal else "no GPU calibration"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="colab-t4")
    parser.add_argument("--gpu-check", default=None, help="a gpu-check.json whose bench-t4 figures calibrate the model")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    result = estimate(args.profile, args.gpu_check)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
