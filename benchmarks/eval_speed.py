"""Evaluation speed: generation vs scoring mode on the offline validation split, against a floor.

    .venv/bin/python benchmarks/eval_speed.py [--model embedded] [--limit 200] [--batch-size 16]

Prints examples/s, accuracy and peak memory for both modes, and the floor for scoring
mode: the FLOPs of one forward pass over the prompt tokens divided by this machine's
measured matmul rate (fp32 GEMM of the model's own shapes). A script, not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from nlu_helpers import data, evaluation, models
from nlu_helpers.tasks import get_task


def matmul_rate(hidden: int, intermediate: int, tokens: int = 2048, repeats: int = 20) -> float:
    """Measured FLOP/s of fp32 matmuls shaped like the model's MLP ([tokens, hidden] x [hidden, intermediate])."""
    a = torch.randn(tokens, hidden)
    b = torch.randn(hidden, intermediate)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    seconds = time.perf_counter() - start
    return 2 * tokens * hidden * intermediate * repeats / seconds


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
    rate = matmul_rate(model.config.hidden_size, model.config.intermediate_size)
    floor_s = forward_flops(model.config, lengths) / rate

    figures = {"model": args.model, "task": task.name, "rows": len(rows), "batch_size": args.batch_size,
               "threads": torch.get_num_threads(), "mean_prompt_tokens": sum(lengths) / len(lengths),
               "matmul_gflops": rate / 1e9, "floor_seconds": floor_s, "floor_examples_per_s": len(rows) / floor_s}
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
    print(f"measured matmul rate: {rate / 1e9:.1f} GFLOP/s; forward FLOPs floor: {figures['floor_examples_per_s']:.2f} examples/s; "
          f"scoring mode is {figures['floor_examples_per_s'] / s['examples_per_s']:.2f}x the floor's time (goal <= 1.5x)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    sys.exit(main())
