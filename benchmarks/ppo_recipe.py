"""PPO recipe runs on one task: which knob moves PPO's accuracy at 135M, and why (issue 14).

Each run trains PPO the way notebook 04 does under the ``cpu-suite`` profile (same training rows,
train_limit 800 shuffled with the seed; same 200 seeded validation rows; same seed), with one
setting changed from ``ppo.CPU_DEMO``, then evaluates in generation mode. It prints accuracy with
its CI, the predicted-label shares (has the policy collapsed to one label?), the policy's entropy
and KL over the last five steps, and the time taken. A script that prints figures, not a test:

    .venv/bin/python -m benchmarks.ppo_recipe --task sports-understanding
    .venv/bin/python -m benchmarks.ppo_recipe --task vitaminc --runs base,kl-0.2,lr-5e-5

Runs (``--runs``, comma-separated): ``base`` (the cpu-suite recipe: CPU_DEMO, 20 steps from the base
model), ``lr-5e-5`` (a quarter of its learning rate), ``kl-0.2`` (four times its KL coefficient),
``steps-40`` (twice the steps), ``answers-16-24`` (longer answer caps), ``temperature-1.0`` (sampling at 1.0,
not 0.7: more exploration), ``from-sft`` (PPO from the
SFT adapter given by ``--sft-adapter``, e.g. the cpu-suite run's multi-task adapter).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
from typing import Any

RUNS: dict[str, dict[str, Any]] = {  # run name -> changes to (PPOConfig fields | steps | from_sft)
    "base": {},
    "lr-5e-5": {"learning_rate": 5e-5},
    "kl-0.2": {"kl_coef": 0.2},
    "steps-40": {"steps": 40},
    "answers-16-24": {"max_new_tokens": (16, 24)},
    "temperature-1.0": {"temperature": 1.0},
    "from-sft": {"from_sft": True},
}
STEPS, TRAIN_LIMIT, EVAL_LIMIT = 20, 800, 200  # the cpu-suite profile's notebook 04 and eval_limit


def one_run(name: str, task: str, sft_adapter: str | None, seed: int) -> dict[str, Any]:
    """Train PPO with one knob changed, evaluate on the validation rows in generation mode."""
    from nlu_helpers import data, evaluation, metrics, ppo
    from nlu_helpers.tasks import get_task

    changes = dict(RUNS[name])
    steps, from_sft = changes.pop("steps", STEPS), changes.pop("from_sft", False)
    if from_sft and not sft_adapter:
        raise SystemExit("--runs from-sft needs --sft-adapter FOLDER (an adapter notebook 03 saved)")
    the_task = get_task(task)
    train_rows = data.load_split(the_task, "train", limit=TRAIN_LIMIT, shuffle_seed=seed)
    split = the_task.eval_splits[0]
    eval_rows = data.load_split(the_task, split, limit=EVAL_LIMIT, shuffle_seed=seed)
    config = ppo.preset("cpu-demo", seed=seed, **changes)
    started = time.perf_counter()
    trainer = ppo.train_ppo("embedded", the_task, train_rows, config, steps=steps,
                            sft_adapter=sft_adapter if from_sft else None, progress=False)
    trained = time.perf_counter() - started
    result = evaluation.evaluate(trainer.policy, trainer.tokenizer, the_task, eval_rows, mode="generate",
                                 split=split, progress=False)
    last = trainer.history[-5:]
    shares = collections.Counter(p["prediction"] for p in result.predictions)
    return {"run": name, "task": task, "changes": RUNS[name], "accuracy": metrics.main_score(task, result.metrics),
            "ci": result.ci.get(the_task.main_metric), "unparseable": result.unparseable / result.n,
            "label_shares": {str(k): v / len(result.predictions) for k, v in sorted(shares.items(), key=str)},
            "entropy_last5": statistics.mean(r["entropy"] for r in last), "kl_last5": statistics.mean(r["kl"] for r in last),
            "reward_last5": statistics.mean(r["reward"] for r in last), "train_s": round(trained, 1),
            "total_s": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ppo_recipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sports-understanding")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)}")
    parser.add_argument("--sft-adapter", help="the SFT adapter folder for the from-sft run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="append each run's figures to this JSON-lines file")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"--runs: unknown {unknown}; allowed: {', '.join(RUNS)}")
    records = []
    print(f"{'task':<22}{'run':<15}{'accuracy':>9}  {'label shares':<28}{'entropy':>8}{'KL':>6}{'reward':>7}{'min':>6}")
    for name in names:
        record = one_run(name, args.task, args.sft_adapter, args.seed)
        records.append(record)
        shares = " ".join(f"{k}:{v:.2f}" for k, v in record["label_shares"].items())
        print(f"{args.task:<22}{name:<15}{100 * record['accuracy']:>9.1f}  {shares:<28}{record['entropy_last5']:>8.2f}"
              f"{record['kl_last5']:>6.2f}{record['reward_last5']:>7.2f}{record['total_s'] / 60:>6.1f}", flush=True)
        if args.json:
            with open(args.json, "a") as handle:
                handle.write(json.dumps(record) + "\n")
    return records


if __name__ == "__main__":
    main()
