"""The prefix cache's speed-up: evaluation and PPO with and without computing the shared prompt once.

    .venv/bin/python -m benchmarks.prefix_cache [--model embedded] [--task movie-snippets] [--rows 64]
    .venv/bin/python -m benchmarks.prefix_cache --ppo [--ppo-preset cpu-demo] [--ppo-steps 3]

For zero-shot and 5-shot prompts (one seeded draw of demonstrations for the whole run, as the
notebooks do), in generation and scoring mode, times ``evaluation.evaluate`` with
``prefix_cache=False`` and ``True`` on the same rows and prints examples/s, the speed-up, the
main metric and how many predictions agree. Each configuration runs ``--repeats`` times after
one warm-up batch, without and with the cache interleaved; the best time counts (the machine is
shared). A script, not a test.

``--ppo`` times ``ppo.PPOTrainer.step`` instead, by phase from its own log rows (``seconds_rollout``,
``seconds_reference``, ``seconds_scoring``, ``seconds_update``, ``seconds_step``), for two trainers
that differ only in ``PPOConfig.prefix_cache``: same seed, same rows, the answer cap fixed at the
preset's highest and no early stop on KL (as ``benchmarks.run`` does), so both do the same work.
After ``--ppo-warmup`` steps each, ``--ppo-steps`` steps each, interleaved (the order alternating
each step); it prints best and median per phase and how far the two runs' losses are apart. Then,
steadier on a loaded machine, one mini-batch's reference pass and update pass (forward + backward)
alone, plain and shared, best of ``--ppo-repeats`` interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
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


PPO_PHASES = ("rollout", "reference", "scoring", "update", "step")  # seconds_<phase> in PPOTrainer.step's log row


def ppo_pair(model_name: str, task, *, preset: str, steps: int, warmup: int, repeats: int, device: str) -> dict:
    """PPO step seconds by phase without and with the prefix cache (two trainers, same seed and rows, steps
    interleaved), the largest gap between their logged losses, and one mini-batch's passes (:func:`ppo_passes`)."""
    from nlu_helpers import ppo

    high = ppo.preset(preset).max_new_tokens[1]
    configs = {use: ppo.preset(preset, max_new_tokens=(high, high), target_kl=None, prefix_cache=use) for use in (False, True)}
    rows = list(data.load_split(task, "train", limit=(warmup + steps) * configs[True].prompts_per_step, shuffle_seed=0))
    trainers = {use: ppo.PPOTrainer(model_name, task, rows, config, device=device) for use, config in configs.items()}
    tokenizer = trainers[True].tokenizer
    shared, mean_len = _shared_tokens(tokenizer, task, rows[:configs[True].batch_size], [])
    logs: dict[bool, list[dict]] = {False: [], True: []}
    for i in range(warmup + steps):
        for use in ((False, True) if i % 2 == 0 else (True, False)):  # a burst of outside load hits both
            row = trainers[use].step()
            print(f"  step {i + 1}{' (warm-up)' if i < warmup else ''} prefix_cache={use}: "
                  + " ".join(f"{k} {row[f'seconds_{k}']:.2f}s" for k in PPO_PHASES), flush=True)
            if i >= warmup:
                logs[use].append(row)
    phases = {}
    for k in PPO_PHASES:
        off, on = [r[f"seconds_{k}"] for r in logs[False]], [r[f"seconds_{k}"] for r in logs[True]]
        phases[k] = dict(off_best=min(off), off_median=statistics.median(off), on_best=min(on), on_median=statistics.median(on),
                         speedup_best=min(off) / min(on), speedup_median=statistics.median(off) / statistics.median(on))
    gaps = {k: max(abs(a[k] - b[k]) for a, b in zip(logs[False], logs[True])) for k in ("policy_loss", "value_loss", "kl", "reward")}
    passes = ppo_passes(trainers[True], repeats) if repeats else {}
    return dict(passes=passes, model=model_name, task=task.name, preset=preset, config=configs[True].to_dict(), warmup=warmup, steps=steps,
                repeats=repeats,
                threads=torch.get_num_threads(), shared_tokens=shared, mean_prompt_tokens=round(mean_len, 1),
                phases=phases, max_abs_gap=gaps)


def ppo_passes(trainer, repeats: int) -> dict:
    """Best seconds of one mini-batch's passes over prompt + answer, plain and with the shared prefix, interleaved:
    the reference's (no gradients) and the update's (forward + backward), on the trainer's last step's first
    ``batch_size`` rows. Finer-grained than the phase times, so steadier on a loaded machine."""
    from nlu_helpers.generation import trim_padding

    cfg, last = trainer.config, trainer.last_step
    rows, answers, answer_mask = last.rows[:cfg.batch_size], last.response_ids[:cfg.batch_size], last.response_mask[:cfg.batch_size]
    prompts = trainer.tokenizer([trainer.task.build_prompt(r) for r in rows], return_tensors="pt", padding=True)  # left padded
    ids, attn, width = trim_padding(torch.cat([prompts["input_ids"].to(answers.device), answers], 1),
                                    torch.cat([prompts["attention_mask"].to(answers.device), answer_mask], 1), answer_mask)
    best = {(kind, use): float("inf") for kind in ("reference", "update") for use in (False, True)}
    for _ in range(repeats):
        for use in (False, True):
            started = time.perf_counter()
            with torch.no_grad():
                trainer.ac(ids, attn, width, cfg.temperature, use)
            best["reference", use] = min(best["reference", use], time.perf_counter() - started)
            started = time.perf_counter()
            logprobs, _, values = trainer.ac(ids, attn, width, cfg.temperature, use)  # [b, w] each
            (logprobs.sum() + values.sum()).backward()
            best["update", use] = min(best["update", use], time.perf_counter() - started)
            trainer.ac.zero_grad(set_to_none=True)
    return {kind: dict(off_best=best[kind, False], on_best=best[kind, True], speedup=best[kind, False] / best[kind, True],
                       rows=len(rows), tokens=int(attn.sum())) for kind in ("reference", "update")}


def print_ppo(result: dict) -> None:
    print(f"PPO step on {result['model']}, {result['task']}, preset {result['preset']} (answers capped at "
          f"{result['config']['max_new_tokens'][1]}, no KL early stop), {result['threads']} threads, "
          f"{result['steps']} timed steps each after {result['warmup']} warm-up, interleaved; "
          f"prompts share {result['shared_tokens']} of {result['mean_prompt_tokens']:.0f} tokens")
    print(f"{'phase':>10} {'off best':>9} {'off med':>9} {'on best':>9} {'on med':>9} {'speed-up best':>13} {'med':>6}")
    for k, p in result["phases"].items():
        print(f"{k:>10} {p['off_best']:>8.2f}s {p['off_median']:>8.2f}s {p['on_best']:>8.2f}s {p['on_median']:>8.2f}s "
              f"{p['speedup_best']:>12.2f}x {p['speedup_median']:>5.2f}x")
    print("largest gap between the two runs' logged figures: "
          + ", ".join(f"{k} {v:.2e}" for k, v in result["max_abs_gap"].items()), flush=True)
    for kind, p in result["passes"].items():
        print(f"one {kind} mini-batch pass ({p['rows']} rows, {p['tokens']} tokens{', forward + backward' if kind == 'update' else ''}), "
              f"best of {result['repeats']}: off {p['off_best']:.3f}s, on {p['on_best']:.3f}s, {p['speedup']:.2f}x", flush=True)


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
    parser.add_argument("--ppo", action="store_true", help="time the PPO step by phase instead of evaluation")
    parser.add_argument("--ppo-preset", default="cpu-demo")
    parser.add_argument("--ppo-steps", type=int, default=3, help="timed PPO steps per setting")
    parser.add_argument("--ppo-warmup", type=int, default=1)
    parser.add_argument("--ppo-repeats", type=int, default=5, help="repeats of the one-mini-batch pass timings (0: none)")
    args = parser.parse_args(argv)

    task = get_task(args.task)
    device = "cpu" if not torch.cuda.is_available() else "auto"
    if args.ppo:
        result = ppo_pair(args.model, task, preset=args.ppo_preset, steps=args.ppo_steps, warmup=args.ppo_warmup,
                          repeats=args.ppo_repeats, device=device)
        print_ppo(result)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return result
    tokenizer = models.load_tokenizer(args.model)
    model = models.load_model(args.model, device=device)
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
