"""The bookkeeping notebooks 02-05 share, so their cells can show the idea instead.

Each stage notebook (zero/few-shot, SFT, PPO, encoder) does the same four things around
its story: read the settings its profile gives beyond the few parameters it declares,
evaluate a model on the task's rows in both modes and save every result, find what the
earlier notebooks of the run measured, and lay the stages out as a table and as bar
groups. Those four live here, once.

Records are the dicts the results files hold (``EvalResult.to_dict()`` plus ``stage``,
``notebook``, ``profile`` and ``name``); :func:`evaluate_stage` also keeps each record's
per-row ``predictions`` in memory so a notebook can show what the model wrote.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from nlu_helpers import evaluation, results
from nlu_helpers.metrics import main_score
from nlu_helpers.report import column_of
from nlu_helpers.tasks import Task, get_task

STAGES = ("zero-shot", "few-shot", "sft", "ppo", "ppo-multi-task", "grpo", "encoder")

# What a profile may set for a notebook beyond the parameters its `parameters` cell declares,
# with the value used when the profile does not say. Keeping these out of the parameters
# cell leaves each notebook a handful of knobs worth turning; a profile sets the rest.
SETTINGS: dict[str, dict[str, Any]] = {
    "01_prompt_design": {"batch_size": 16},
    "02_zero_few_shot": {
        "adapter": None,            # a LoRA adapter folder to evaluate on top of the model
        "split": None,              # None: the task's evaluation split(s) (MNLI: matched and mismatched)
        "shot_seed": 0,
        "shot_strategy": "random",  # "random" (seeded) or "first" (the authors' scripts)
        "modes": ["generate", "score"],
        "calibrate": True,          # also report contextual calibration in scoring mode
        "batch_size": 16,
        "max_new_tokens": 8,
        "n_bootstrap": 1000,
    },
    "03_lora_sft": {
        "epochs": 1.0,              # used when max_steps is None
        "batch_size": 16,
        "gradient_accumulation_steps": 1,
        "max_length": 256,          # tokens of prompt + answer; longer rows are an error, not silently cut
        "packing": False,           # the paper packs rows into 1024-token sequences
        "lora_target_modules": None,  # None: PEFT's default for the architecture (q_proj, v_proj); or "all-linear"
        "load_in_4bit": False,      # QLoRA, CUDA + bitsandbytes only (a 7B model on a 16 GB T4)
        "gradient_checkpointing": False,
        "save_steps": 10,           # a rerun after a disconnect resumes from the last checkpoint
        "overwrite": False,         # True: retrain even when the adapter folder holds a finished run
        "eval_batch_size": 16,
        "max_new_tokens": 8,
        "modes": ["generate", "score"],  # evaluation modes ("generate": the paper's reading; "score": rank classification)
        "n_bootstrap": 1000,
    },
    "04_ppo": {
        "train_limit": 800,         # training rows PPO draws prompts from (None: the whole split)
        "learning_rate": None,      # None: the preset's
        "temperature": None,        # None: the preset's
        "checkpoint_every": 5,      # a rerun after a disconnect resumes from the last checkpoint
        "eval_batch_size": 16,
        "max_new_tokens": 8,        # for evaluation (rollouts use the preset's range)
        "modes": ["generate", "score"],  # evaluation modes, as for notebook 03
        "compare_grpo": False,      # also train TRL's GRPOTrainer with the same reward and evaluate it
        "grpo_steps": 20,
        "n_bootstrap": 1000,
    },
    "05_encoder_baseline": {"epochs": 2.0, "learning_rate": 5e-5, "batch_size": 32},
    "06_results": {"n_bootstrap": 1000},
}


def notebook_settings(profile: str, notebook: str) -> SimpleNamespace:
    """The settings :data:`SETTINGS` lists for ``notebook``, with the profile's values over the defaults.

    A profile's ``parameters`` apply to every notebook that has the key; its
    ``notebooks.<notebook>`` section wins over them (the same order the runner uses).
    """
    from nlu_helpers.runner import load_profile

    if notebook not in SETTINGS:
        raise ValueError(f"no settings for notebook {notebook!r}; allowed: {', '.join(SETTINGS)}")
    content = load_profile(profile)
    given = {**content["parameters"], **(content["notebooks"].get(notebook) or {})}
    defaults = SETTINGS[notebook]
    return SimpleNamespace(**{key: given.get(key, value) for key, value in defaults.items()})


def _mode_label(record: Mapping) -> str:
    return record["mode"] + (" + calibration" if record.get("calibrated") else "")


def evaluate_stage(
    model,
    tokenizer,
    task: Task | str,
    rows_by_split: Mapping[str, Any],
    *,
    stage: str,
    notebook: str,
    profile: str,
    output_dir: str | Path,
    modes: Sequence[str] = evaluation.MODES,
    shots: Sequence[Mapping] = (),
    calibrate: bool = False,
    **evaluate_kwargs: Any,
) -> list[dict]:
    """Evaluate one stage on every split and mode, save each result, return the records.

    ``calibrate=True`` adds a calibrated scoring-mode run on classification tasks. Other
    keyword arguments go to :func:`nlu_helpers.evaluation.evaluate` (``batch_size``,
    ``max_new_tokens``, ``n_bootstrap``, ``seed``, ``model_name``, ``adapter``, ...).
    Files are named ``<notebook number>-<stage>-<task>-<split>-<mode>-k<shots>``.
    """
    task = get_task(task)
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not known; allowed: {', '.join(STAGES)}")
    records = []
    for split, rows in rows_by_split.items():
        for mode in modes:
            variants = [False, True] if calibrate and mode == "score" and task.kind == "classification" else [False]
            for calibrated in variants:
                result = evaluation.evaluate(model, tokenizer, task, rows, mode=mode, shots=shots, calibrate=calibrated,
                                             split=split, **evaluate_kwargs)
                name = results.result_name(notebook[:2], stage, task.name, split, mode + ("-calibrated" if calibrated else ""),
                                           f"k{len(shots)}")
                record = result.to_dict() | {"stage": stage, "notebook": notebook, "profile": profile}
                results.save_result(record, output_dir, name, result.predictions)
                records.append({"name": name, **record, "predictions": result.predictions})
    return records


def measured(
    output_dir: str | Path,
    task: Task | str,
    *,
    stages: Iterable[str] = STAGES,
    n: int | None = None,
    mode: str | None = None,
) -> list[dict]:
    """Uncalibrated evaluations of ``task`` in a run folder (file order), optionally of ``n`` rows or one mode.

    This is how a later notebook finds what earlier ones measured on the same rows.
    """
    name = get_task(task).name
    wanted = set(stages)
    return [
        r for r in results.load_results(output_dir)
        if "metrics" in r and r.get("task") == name and r.get("stage") in wanted and not r.get("calibrated")
        and (n is None or r.get("n") == n) and (mode is None or r.get("mode") == mode)
    ]


def _ci(record: Mapping, task: Task) -> tuple[float, float]:
    main = main_score(task, record["metrics"])
    low, high = record.get("ci", {}).get(task.main_metric, (main, main))
    return float(low), float(high)


def stage_table(records: Iterable[Mapping]) -> pd.DataFrame:
    """One row per (stage, split, k, mode), stages in the paper's order: main metric, its 95% CI,
    unparseable answers, the authors' random fill-in, speed.

    A stage measured twice on the same rows (e.g. zero-shot by notebooks 02 and 03) keeps
    the later record.
    """
    rows = []
    for r in records:
        task = get_task(r["task"])
        main = main_score(task, r["metrics"])
        low, high = _ci(r, task)
        fill = r.get("metrics_random_fill")
        rows.append({
            "stage": r["stage"], "task": task.name, "split": r.get("split"), "k": r.get("k", 0), "mode": _mode_label(r),
            "metric": task.main_metric, "value": round(main, 4), "95% CI": f"[{low:.3f}, {high:.3f}]",
            "unparseable": f"{r['unparseable']}/{r['n']}" if "unparseable" in r else "-",
            "random fill-in": None if fill is None else round(float(main_score(task, fill)), 4),
            "examples/s": round(float(r["examples_per_s"]), 1) if r.get("examples_per_s") is not None else None,
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.drop_duplicates(["stage", "task", "split", "k", "mode"], keep="last")
    table = table.sort_values("stage", key=lambda column: column.map(STAGES.index), kind="stable")  # the paper's row order
    if table["task"].nunique() == 1 and table["metric"].nunique() == 1:  # one task: name the column after its metric
        table = table.drop(columns="task").rename(columns={"value": table["metric"].iloc[0]}).drop(columns="metric")
    return table.reset_index(drop=True)


def _label(record: Mapping, key: str) -> str:
    if key == "column":  # the paper-table column: the task, MNLI split into -m and -mm
        return column_of(record)
    if key == "mode":
        return _mode_label(record)
    if key == "k":
        return f"k={record.get('k', 0)}"
    return str(record[key])


def bar_groups(
    records: Iterable[Mapping], *, x: str = "mode", series: str = "stage"
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, tuple[float, float]]]]:
    """``(groups, errors)`` for :func:`nlu_helpers.plots.bar_chart`: the main metric of each record
    at ``groups[x label][series label]``, its 95% CI in ``errors``. Labels come from the record's
    ``x`` and ``series`` keys (``"mode"`` includes "+ calibration", ``"k"`` reads "k=5", ``"column"``
    is the paper-table column); the split is added to the x label when the records span more than one."""
    records = list(records)
    several_splits = x not in ("split", "column") and len({r.get("split") for r in records}) > 1
    groups: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, tuple[float, float]]] = {}
    for r in records:
        task = get_task(r["task"])
        where = _label(r, x) + (f" · {r.get('split')}" if several_splits else "")
        groups.setdefault(where, {})[_label(r, series)] = main_score(task, r["metrics"])
        errors.setdefault(where, {})[_label(r, series)] = _ci(r, task)
    return groups, errors
