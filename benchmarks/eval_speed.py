"""Evaluation speed: generation vs scoring mode on the offline validation split, against a floor.

    .venv/bin/python benchmarks/eval_speed.py [--model embedded] [--limit 200] [--batch-size 16]

Prints examples/s, accuracy and peak memory for both modes, and the floor for scoring
mode: the FLOPs of one forward pass over the prompt tokens divided by this machine's
matmul rate, probed on the model's own layer shapes at the batch's token count (best of
several repeats; their spread is printed). ``benchmarks.run`` takes its probes from here.
A script, not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import torch

from nlu_helpers import data, evaluation, models
from nlu_helpers.tasks import get_task


def linear_shapes(model: torch.nn.Module) -> dict:
    """The matmuls a forward pass runs, read from the model's own linear layers.

    ``layers``: ``[in, out, count]`` of every frozen linear layer inside the decoder (LoRA's
    own ``lora_A``/``lora_B`` excluded, the LM head excluded), ``head``: ``[hidden, vocab]``,
    ``layer_parameters``: their weights (in x out, so a 4-bit layer counts its logical size),
    ``lora_parameters``: LoRA's A and B matrices.
    """
    from collections import Counter

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    shapes: Counter = Counter()
    lora = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        if "lora_" in name:
            lora += module.in_features * module.out_features
        else:
            shapes[(module.in_features, module.out_features)] += 1
    return {"layers": [[i, o, n] for (i, o), n in sorted(shapes.items())], "head": [head.in_features, head.out_features],
            "layer_parameters": sum(i * o * n for (i, o), n in shapes.items()), "lora_parameters": lora}


def _timed(run, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def matmul_probe(shapes: list[tuple[int, int, int]], *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 repeats: int = 7, min_seconds: float = 0.05) -> dict:
    """This machine's matmul rate on the given ``(tokens, in, out)`` shapes, best of ``repeats``.

    A bound must not be beaten by the program it bounds, so each shape is timed ``repeats`` times
    (round robin over the shapes, so a burst of someone else's load hits one repeat of each, not
    every repeat of one) and its best repeat counts; ``peak_flops`` is the best shape's best. The
    spread between a shape's worst and best repeat says how steady the machine was while probing.
    """
    device = torch.device(device)
    cases = []
    for tokens, n_in, n_out in shapes:
        a = torch.randn(tokens, n_in, dtype=dtype, device=device)
        b = torch.randn(n_in, n_out, dtype=dtype, device=device)
        c = torch.empty(tokens, n_out, dtype=dtype, device=device)
        def call(a=a, b=b, c=c) -> None:
            torch.mm(a, b, out=c)

        once = min(_timed(call, device), _timed(call, device))  # the first is a warm-up (allocations, kernel choice)
        calls = max(1, int(min_seconds / max(once, 1e-6)))  # calls per repeat: each repeat lasts about min_seconds
        cases.append({"shape": [tokens, n_in, n_out], "calls": calls, "rates": [],
                      "run": lambda call=call, k=calls: [call() for _ in range(k)]})
    for _ in range(repeats):
        for case in cases:
            seconds = _timed(case["run"], device)
            tokens, n_in, n_out = case["shape"]
            case["rates"].append(2 * tokens * n_in * n_out * case["calls"] / seconds)
    figures = []
    for case in cases:
        rates = sorted(case["rates"])
        figures.append({"shape": case["shape"], "calls_per_repeat": case["calls"], "best_flops": rates[-1],
                        "median_flops": statistics.median(rates), "worst_flops": rates[0],
                        "relative_spread": (rates[-1] - rates[0]) / rates[-1]})
    best = max(figures, key=lambda f: f["best_flops"])
    return {"peak_flops": best["best_flops"], "peak_shape": best["shape"], "repeats": repeats, "dtype": str(dtype).removeprefix("torch."),
            "device": str(device), "shapes": figures, "max_relative_spread": max(f["relative_spread"] for f in figures)}


def copy_probe(*, device: str | torch.device = "cpu", mib: int = 256, repeats: int = 7) -> dict:
    """Copy bandwidth (bytes read + written per second) of a ``mib`` MiB tensor, best of ``repeats``."""
    device = torch.device(device)
    a = torch.ones(mib * 2**20 // 4, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    rates = sorted(2 * a.numel() * a.element_size() / _timed(lambda: b.copy_(a), device) for _ in range(repeats))
    return {"bandwidth_bytes_per_s": rates[-1], "median_bytes_per_s": statistics.median(rates), "worst_bytes_per_s": rates[0],
            "relative_spread": (rates[-1] - rates[0]) / rates[-1], "repeats": repeats, "mib": mib}


def model_shapes(model: torch.nn.Module, tokens: int, head_tokens: int) -> list[tuple[int, int, int]]:
    """``(tokens, in, out)`` of each distinct linear layer of ``model``, the LM head at ``head_tokens``."""
    layout = linear_shapes(model)
    return [(tokens, i, o) for i, o, _n in layout["layers"]] + [(head_tokens, *layout["head"])]


def forward_flops(config, prompt_lengths: list[int]) -> float:
    """FLOPs of one forward pass over each prompt: weights (2 per parameter per token), attention
    scores and values (4 * T^2 * hidden per layer, the full square as SDPA computes it with a
    padding mask), and the LM head at the last position only."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", hidden // config.num_attention_heads)
    kv = config.num_key_value_heads * head_dim
    per_layer = hidden * hidden * 2 + hidden * kv * 2 + 3 * hidden * config.intermediate_size  # q,o + k,v + mlp
    total = 0.0
    for t in prompt_lengths:
        total += 2 * per_layer * layers * t + 4 * layers * t * t * hidden + 2 * hidden * config.vocab_size
    return total


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=models.EMBEDDED_MODEL)
    parser.add_argument("--task", default="movie-snippets")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    task = get_task(args.task)
    rows = list(data.load_split(task, "validation", limit=args.limit, shuffle_seed=0))
    tokenizer = models.load_tokenizer(args.model)
    model = models.load_model(args.model, device="cpu")
    lengths = [len(tokenizer(task.build_prompt(r))["input_ids"]) for r in rows]
    # a scoring batch: batch_size prompts through every layer, the LM head at one position per row
    probe = matmul_probe(model_shapes(model, args.batch_size * round(sum(lengths) / len(lengths)), args.batch_size))
    rate = probe["peak_flops"]
    floor_s = forward_flops(model.config, lengths) / rate

    figures = {"model": args.model, "task": task.name, "rows": len(rows), "batch_size": args.batch_size,
               "threads": torch.get_num_threads(), "mean_prompt_tokens": sum(lengths) / len(lengths),
               "matmul_gflops": rate / 1e9, "matmul_probe": probe, "floor_seconds": floor_s, "floor_examples_per_s": len(rows) / floor_s}
    evaluation.evaluate(model, tokenizer, task, rows[:8], mode="score", batch_size=8, n_bootstrap=0, progress=False)  # warm-up
    for mode in ("generate", "score"):
        start = time.perf_counter()
        result = evaluation.evaluate(model, tokenizer, task, rows, mode=mode, batch_size=args.batch_size,
                                     n_bootstrap=0, progress=False)
        seconds = time.perf_counter() - start
        figures[mode] = {"seconds": seconds, "examples_per_s": len(rows) / seconds,
                         "accuracy": result.metrics["accuracy"], "unparseable": result.unparseable,
                         "peak_rss_gib": peak_rss_gib()}
    g, s = figures["generate"], figures["score"]
    print(f"model {args.model}, {len(rows)} rows of {task.name}, batch {args.batch_size}, {figures['threads']} threads, "
          f"mean prompt {figures['mean_prompt_tokens']:.0f} tokens")
    print(f"{'mode':<10}{'examples/s':>12}{'accuracy':>10}{'unparseable':>13}{'peak RSS GiB':>14}")
    for mode in ("generate", "score"):
        f = figures[mode]
        print(f"{mode:<10}{f['examples_per_s']:>12.2f}{f['accuracy']:>10.3f}{f['unparseable']:>13}{f['peak_rss_gib']:>14.2f}")
    print(f"scoring / generation speed: {s['examples_per_s'] / g['examples_per_s']:.2f}x (goal >= 2x)")
    print(f"matmul rate: {rate / 1e9:.1f} GFLOP/s, best of {probe['repeats']} repeats on the model's shapes "
          f"(worst repeat up to {100 * probe['max_relative_spread']:.0f}% slower); forward FLOPs floor: {figures['floor_examples_per_s']:.2f} examples/s; "
          f"scoring mode is {figures['floor_examples_per_s'] / s['examples_per_s']:.2f}x the floor's time (goal <= 1.5x)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    sys.exit(main())
