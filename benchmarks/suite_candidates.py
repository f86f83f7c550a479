"""Which BIG-bench candidates can the embedded 135M model learn? Zero-shot, then a short LoRA SFT, per task.

    .venv/bin/python -m benchmarks.suite_candidates [--tasks vitaminc,hyperbaton,...] [--rows 200] [--steps 30]

For every candidate task file in ``nlu_helpers/suite`` this evaluates the base model zero-shot in
scoring mode on ``--rows`` validation rows, trains a LoRA adapter for ``--steps`` steps of
``--batch-size`` training rows (the cpu-demo's SFT settings otherwise), evaluates again, and prints
one line per task: majority-class accuracy, zero-shot, after SFT, the gain with its 95% CI from a
paired bootstrap over the same rows, and the minutes it took. ``--zero-shot-only`` skips the
training: scoring-mode zero-shot on ``--rows`` seeded validation rows (``data.load_split(...,
shuffle_seed=0)``) with the share of each predicted label, a minute per task. A script, not a
test: the suite was chosen from its output (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from collections import Counter

from nlu_helpers import data, evaluation, models, report, sft
from nlu_helpers.suite import suite_task_files
from nlu_helpers.tasks import get_task


def zero_shot_only(args: argparse.Namespace) -> list[dict]:
    """Scoring-mode zero-shot per task, with the majority class and how the predictions spread over the labels."""
    tokenizer = models.load_tokenizer(args.model)
    base = models.load_model(args.model, device="cpu", dtype="float32")
    lines = []
    for name in args.tasks.split(","):
        started, task = time.perf_counter(), get_task(name)
        rows = data.load_split(task, "validation", limit=args.rows, shuffle_seed=0)
        references = list(rows["label"])
        result = evaluation.evaluate(base, tokenizer, task, rows, mode="score", n_bootstrap=0, progress=False)
        shares = Counter(task.answer_words[p["prediction"]] for p in result.predictions)
        line = {"task": task.name, "rows": len(references),
                "majority": 100 * Counter(references).most_common(1)[0][1] / len(references),
                "zero_shot": 100 * result.metrics["accuracy"], "predicted": dict(shares),
                "minutes": (time.perf_counter() - started) / 60}
        lines.append(line)
        print(f"{task.name:<22} majority {line['majority']:5.1f}  zero-shot {line['zero_shot']:5.1f}  predicted {dict(shares)}",
              flush=True)
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=models.EMBEDDED_MODEL)
    parser.add_argument("--tasks", default=",".join(suite_task_files()))
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--json", default=None, help="also write the lines here")
    parser.add_argument("--zero-shot-only", action="store_true", help="no SFT: zero-shot and the predicted label shares")
    args = parser.parse_args(argv)
    if args.zero_shot_only:
        return zero_shot_only(args)

    tokenizer = models.load_tokenizer(args.model)
    base = models.load_model(args.model, device="cpu", dtype="float32")
    lines = []
    print(f"{'task':<22}{'labels':>7}{'majority':>10}{'zero-shot':>11}{'SFT':>7}{'gain [95% CI]':>24}{'min':>6}")
    for name in args.tasks.split(","):
        started = time.perf_counter()
        task = get_task(name)
        validation = data.load_split(task, "validation")
        rows = validation.select(range(min(args.rows, validation.num_rows)))
        train = data.load_split(task, "train").shuffle(seed=0).select(range(args.steps * args.batch_size))
        references = list(rows["label"])
        majority = 100 * Counter(references).most_common(1)[0][1] / len(references)
        zero = evaluation.evaluate(base, tokenizer, task, rows, mode="score", n_bootstrap=0, progress=False)
        settings = sft.CPU_DEMO.replace(max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                                        max_length=768, save_steps=10_000)
        with tempfile.TemporaryDirectory() as folder:
            with contextlib.redirect_stdout(io.StringIO()):  # the Trainer's per-step log lines
                adapter = sft.train_sft(settings, model=args.model, train_rows=train, task=task, output_dir=folder, progress=False)
            tuned, _ = sft.load_trained(adapter, device="cpu")
            after = evaluation.evaluate(tuned, tokenizer, task, rows, mode="score", n_bootstrap=0, progress=False)
        paired = report.paired_gain(task, [r["prediction"] for r in zero.predictions], [r["prediction"] for r in after.predictions],
                                    references, metric="accuracy", n_resamples=2000)  # the notebooks' paired bootstrap
        gain, low, high = (100 * paired[k] for k in ("gain", "low", "high"))
        line = {"task": task.name, "labels": len(task.answer_words), "rows": len(references), "majority": majority,
                "zero_shot": 100 * zero.metrics["accuracy"], "sft": 100 * after.metrics["accuracy"],
                "gain": gain, "gain_ci": [low, high], "minutes": (time.perf_counter() - started) / 60}
        lines.append(line)
        print(f"{task.name:<22}{line['labels']:>7}{majority:>10.1f}{line['zero_shot']:>11.1f}{line['sft']:>7.1f}"
              f"{gain:>+9.1f} [{low:+5.1f}, {high:+5.1f}]{line['minutes']:>6.1f}", flush=True)
        if args.json:  # after every task: a long run interrupted keeps what it measured
            with open(args.json, "w") as handle:
                json.dump(lines, handle, indent=1)
    return lines


if __name__ == "__main__":
    main()
