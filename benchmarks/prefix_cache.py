"""The prefix cache's speed-up: evaluation with and without computing the shared prompt once.

    .venv/bin/python -m benchmarks.prefix_cache [--model embedded] [--task movie-snippets] [--rows 64]

For zero-shot and 5-shot prompts (one seeded draw of demonstrations for the whole run, as the
notebooks do), in generation and scoring mode, times ``evaluation.evaluate`` with
``prefix_cache=False`` and ``True`` on the same rows and prints examples/s, the speed-up, the
main metric and how many predictions agree. Each configuration runs ``--repeats`` times after
one warm-up batch, without and with the cache interleaved; the best time counts (the machine is
shared). A script, not a test.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from nlu_helpers import data, evaluation, models
from nlu_helpers.prompts import select_shots
from nlu_helpers.tasks import get_task


def _run_pair(model, tokenizer, task, rows, *, mode, shots, batch_size, repeats):
    """Best seconds and last result without and with the cache, the two runs interleaved in each repeat so a
    burst of someone else's load on the shared machine hits both, not one."""
    best, results = {False: float("inf"), True: float("inf")}, {}
    for _ in range(repeats):
        for use_cache in (False, True):
            started = time.perf_counter()
            results[use_cache] = evaluation.evaluate(model, tokenizer, task, rows, mode=mode, shots=shots, batch_size=batch_size,
                                                     n_bootstrap=0, progress=False, prefix_cache=use_cache)
            best[use_cache] = min(best[use_cache], time.perf_counter() - started)
    return best[False], results[False], best[True], results[True]


def _shared_tokens(tokenizer, task, rows, shots) -> tuple[int, float]:
    """Tokens every prompt shares, and the mean prompt length: the share the cache can skip."""
    from nlu_helpers.prefix_cache import shared_length

    ids = [tokenizer(task.build_prompt(r, shots))["input_ids"] for r in rows]
    return shared_length(ids), sum(map(len, ids)) / len(ids)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=models.EMBEDDED_MODEL)
    parser.add_argument("--task", default="movie-snippets")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="generate,score")
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args(argv)

    task = get_task(args.task)
    tokenizer = models.load_tokenizer(args.model)
    model = models.load_model(args.model, device="cpu" if not torch.cuda.is_available() else "auto")
    model.eval()
    rows = list(data.load_split(task, args.split, limit=args.rows))
    pool = data.demonstration_pool(task)
    table = []
    print(f"{args.model} on {task.name} {args.split} ({len(rows)} rows), batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    header = f"{'shots':>5} {'mode':>8} {'shared/prompt tok':>18} {'off ex/s':>9} {'on ex/s':>9} {'speed-up':>8} " \
             f"{'metric off':>10} {'metric on':>10} {'agree':>7}"
    print(header)
    for k in (0, args.shots):
        shots = select_shots(pool, k, seed=0) if k else []
        shared, mean_len = _shared_tokens(tokenizer, task, rows, shots)
        # warm-up: one batch through each path (allocator, kernels)
        evaluation.evaluate(model, tokenizer, task, rows[:args.batch_size], shots=shots, batch_size=args.batch_size,
                            n_bootstrap=0, progress=False)
        for mode in args.modes.split(","):
            off_s, off, on_s, on = _run_pair(model, tokenizer, task, rows, mode=mode, shots=shots,
                                             batch_size=args.batch_size, repeats=args.repeats)
            agree = sum(a["prediction"] == b["prediction"] for a, b in zip(off.predictions, on.predictions)) / len(rows)
            record = dict(shots=k, mode=mode, shared_tokens=shared, mean_prompt_tokens=round(mean_len, 1),
                          off_examples_per_s=len(rows) / off_s, on_examples_per_s=len(rows) / on_s, speedup=off_s / on_s,
                          metric_off=off.main, metric_on=on.main, agree=agree)
            table.append(record)
            print(f"{k:>5} {mode:>8} {f'{shared}/{mean_len:.0f}':>18} {record['off_examples_per_s']:>9.2f} "
                  f"{record['on_examples_per_s']:>9.2f} {record['speedup']:>7.2f}x {off.main:>10.2f} {on.main:>10.2f} "
                  f"{agree:>7.1%}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "task": task.name, "rows": len(rows), "batch_size": args.batch_size,
                       "table": table}, f, indent=2)
    return {"table": table}


if __name__ == "__main__":
    main()
