"""LoRA supervised fine-tuning (the paper's SFT row) on TRL's ``SFTTrainer``.

Each training example is a prompt/completion pair:

    prompt     = task.build_prompt(row)              ... "Assistant: <Judgement>"
    completion = task.target(row) + EOS              " Positive </Judgement><|im_end|>"

and TRL's ``completion_only_loss`` puts the loss on the completion only, so the model
learns to *answer* (and to close the tag and stop), not to rewrite prompts.

What we add around TRL is the bookkeeping a notebook needs:

- :func:`sft_examples` and :func:`mix_tasks` turn task rows into prompt/completion rows
  (multi-task: small tasks repeated up to a target size, as the paper did);
- :func:`train_sft` checks the data (no rows, rows longer than ``max_length``), trains
  with checkpoints every ``save_steps`` and **resumes** from the last complete one when
  a run was interrupted (kernel restart, Colab disconnect, ``kill -9``); it saves the
  adapter with the tokenizer and a ``training.json`` saying how it was trained; an update
  that makes the LoRA weights NaN/inf is rolled back (:class:`~nlu_helpers.callbacks.NonFiniteGuard`),
  and too many of them stop the run before anything is saved;
- :func:`load_trained` reloads an adapter for evaluation or as the start of PPO;
  :func:`merge_adapter` folds it into a plain model folder.

Layout of an output folder::

    adapter_config.json, adapter_model.safetensors   the LoRA adapter (PEFT)
    tokenizer*.json, ...                              the tokenizer it was trained with
    training.json                                     how it was trained (written last: marks it complete)
    run.json                                          the run's identity (model, settings, data hash)
    checkpoints/checkpoint-N/                         while training (removed at the end unless kept)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import torch
from transformers import TrainerCallback

from nlu_helpers import data, models
from nlu_helpers.callbacks import LivePlotCallback, NonFiniteGuard, NonFiniteWeights  # noqa: F401 - part of sft's API
from nlu_helpers.results import write_atomic
from nlu_helpers.tasks import Task, get_task, record_candidates

if TYPE_CHECKING:  # pragma: no cover
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase
    from trl import SFTTrainer

TRAINING_FILE = "training.json"
RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULERS = ("linear", "constant", "constant_with_warmup", "cosine")
# Settings that change nothing about the trained adapter: a resumed run may differ in them.
_BOOKKEEPING = ("save_steps", "logging_steps", "keep_checkpoints", "max_skipped_updates")
# Old setting names: PPOConfig's names are the one name for each thing.
RENAMED = {"target_modules": "lora_target_modules"}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SFTSettings:
    """Everything that shapes an SFT run. ``batch_size`` is per step on one device; the
    effective batch is ``batch_size * gradient_accumulation_steps``."""

    learning_rate: float = 2e-4  # peak learning rate of the schedule
    batch_size: int = 16  # sequences per forward/backward pass on one process (the mini-batch)
    gradient_accumulation_steps: int = 1  # mini-batches per optimizer step
    epochs: float = 1.0  # passes over the training rows (when max_steps is None)
    max_steps: int | None = None  # optimizer steps in total; when set, overrides epochs
    max_length: int = 512  # tokens of prompt + completion (the pack length when packing); longer rows are an error
    packing: bool = False  # pack rows into max_length sequences (the paper's), each still attending only to itself
    lr_scheduler: str = "linear"  # "linear" (the Trainer's default, which the authors' script ran with), "constant", ...
    warmup_ratio: float = 0.0  # fraction of the steps for a linear warmup, in [0, 1)
    weight_decay: float = 0.0
    seed: int = 0
    # LoRA (the paper's values; bias "none": see models.lora_config for why not the paper's "all")
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator (rank-stabilised: alpha / sqrt(r))
    lora_dropout: float = 0.05
    lora_bias: str = "none"  # "none", "all" or "lora_only" ("all" trains the base model's biases)
    lora_target_modules: tuple[str, ...] | str | None = None  # None: PEFT's default (q_proj, v_proj); or "all-linear"
    # precision and memory
    precision: str = "auto"  # bf16 on a GPU that has it, fp16 on other GPUs, fp32 on CPU
    load_in_4bit: bool = False  # QLoRA: CUDA + bitsandbytes only
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% slower
    device: str = "auto"  # "auto" (the GPU if there is one, else the CPU), "cpu", "cuda"
    max_skipped_updates: int = 3  # an update that makes LoRA weights NaN/inf is rolled back; stop the run after more than this
    # bookkeeping
    save_steps: int = 10  # checkpoint every N steps: a rerun after an interruption resumes from the last one
    logging_steps: int = 1  # log the loss every N steps
    keep_checkpoints: bool = False  # keep the checkpoints folder after training

    def __post_init__(self) -> None:
        def positive(name: str, value: Any, kind: type = int) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
                raise ValueError(f"{name} must be a positive {'number' if kind is float else 'integer'}, got {value!r}")

        positive("learning_rate", self.learning_rate, float)
        if not math.isfinite(self.learning_rate):
            raise ValueError(f"learning_rate must be a finite number, got {self.learning_rate!r}")
        if isinstance(self.max_skipped_updates, bool) or not isinstance(self.max_skipped_updates, int) or self.max_skipped_updates < 0:
            raise ValueError(f"max_skipped_updates must be an integer >= 0, got {self.max_skipped_updates!r}")
        positive("epochs", self.epochs, float)
        for name in ("batch_size", "gradient_accumulation_steps", "max_length", "save_steps", "logging_steps", "lora_r", "lora_alpha"):
            positive(name, getattr(self, name))
        if self.max_steps is not None:
            positive("max_steps", self.max_steps)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.lr_scheduler not in SCHEDULERS:
            raise ValueError(f"lr_scheduler {self.lr_scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.lora_bias not in models.LORA_BIASES:
            raise ValueError(f"lora_bias {self.lora_bias!r} is not one of {', '.join(models.LORA_BIASES)}")
        if self.lora_bias != "none":
            warnings.warn(
                f"lora_bias={self.lora_bias!r} trains biases of the base model: switching the adapter off no longer "
                "gives the base model back, so a PPO reference built that way drifts with training (a pitfall of "
                "the authors' scripts)", stacklevel=3,
            )
        if isinstance(self.lora_target_modules, list):  # keep the dataclass hashable and its JSON stable
            object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))

    def to_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        if isinstance(record["lora_target_modules"], tuple):
            record["lora_target_modules"] = list(record["lora_target_modules"])
        return record

    def replace(self, **changes: Any) -> "SFTSettings":
        """A copy with some fields changed, e.g. ``CPU_DEMO.replace(max_steps=3)``."""
        for old, new in RENAMED.items():
            if old in changes:
                raise ValueError(f"SFT setting {old!r} is now called {new!r}")
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown SFT setting(s) {unknown}; allowed: {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)


# The paper's SFT (one A100, 7B models): lr 9e-6, batch 24, one epoch over the multi-task mix,
# sequences packed to 1024 tokens, bf16. Gradient checkpointing is our addition (memory only).
# The paper trained LoRA biases too; use PAPER.replace(lora_bias="all") to copy that as well.
PAPER = SFTSettings(
    learning_rate=9e-6, batch_size=24, epochs=1.0, max_length=1024, packing=True,
    precision="bf16", gradient_checkpointing=True, save_steps=200, logging_steps=10,
)

# The CPU demo on SmolLM2-135M-Instruct and movie-snippets (about 5 minutes on 2 cores).
# lr 2e-4 was measured to work there (see notebooks/03_lora_sft and the closing note);
# the paper's 9e-6 barely moves a 135M model in 30 steps.
CPU_DEMO = SFTSettings(learning_rate=2e-4, batch_size=16, max_steps=30, max_length=256, save_steps=10)


# --------------------------------------------------------------------------- data


def sft_examples(task: Task | str, rows: Iterable[Mapping]) -> list[dict]:
    """Prompt/completion rows for one task; ReCoRD becomes one yes/no row per candidate entity.

    The completion has no EOS yet: :func:`train_sft` adds the tokenizer's own. Each row
    remembers its task and the index of the row it came from (for error messages).
    """
    task = get_task(task)
    examples = []
    for index, row in enumerate(rows):
        units = record_candidates(row) if task.kind == "record" else [row]
        for unit in units:
            examples.append({
                "task": task.name,
                "source_index": index,
                "prompt": task.build_prompt(unit),
                "completion": task.target(unit),
            })
    return examples


def mix_tasks(rows_by_task: Mapping[str, Iterable[Mapping]], target_size: int, *, seed: int = 0) -> list[dict]:
    """A multi-task training set: each task with fewer than ``target_size`` examples is repeated
    up to exactly ``target_size`` (the paper: small tasks up to about 30k rows), larger tasks
    are kept whole; then everything is shuffled with ``seed``.

    Repetition is balanced: every row of a small task appears ``target_size // n`` or one
    more time (the extra copies are a seeded sample), so no row is over-represented.
    """
    if isinstance(target_size, bool) or not isinstance(target_size, int) or target_size <= 0:
        raise ValueError(f"target_size must be a positive number of rows, got {target_size!r}")
    if not rows_by_task:
        raise ValueError("rows_by_task is empty: give at least one task, e.g. {'sst2': rows}")
    rng = random.Random(seed)
    mixed: list[dict] = []
    for name, rows in rows_by_task.items():
        examples = sft_examples(name, rows)
        if not examples:
            raise ValueError(f"task {name!r} has no rows to train on")
        repeats, extra = divmod(target_size, len(examples)) if len(examples) < target_size else (1, 0)
        mixed += [dict(e) for _ in range(repeats) for e in examples]
        mixed += [dict(e) for e in rng.sample(examples, extra)]
    rng.shuffle(mixed)
    return mixed


def tokenize_example(tokenizer: "PreTrainedTokenizerBase", example: Mapping) -> tuple[list[int], list[bool]]:
    """Token ids of prompt + completion and which of them carry the loss, as TRL builds them.

    TRL tokenizes the prompt and prompt+completion separately and starts the completion
    where the two token lists part (``common_prefix_length``); we do the same, so what a
    notebook shows is what the trainer trains on (a test checks it against TRL).
    """
    from trl.data_utils import common_prefix_length

    prompt_ids = tokenizer(example["prompt"])["input_ids"]
    ids = tokenizer(example["prompt"] + example["completion"])["input_ids"]
    start = common_prefix_length(prompt_ids, ids)
    return ids, [i >= start for i in range(len(ids))]


def check_lengths(tokenizer: "PreTrainedTokenizerBase", examples: Sequence[Mapping], max_length: int) -> list[int]:
    """Token lengths of the examples; a clear error for the first one longer than ``max_length``.

    TRL would cut it silently (or drop it if only prompt is left), training on a row
    whose answer is gone.
    """
    texts = [e["prompt"] + e["completion"] for e in examples]
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    for i, length in enumerate(lengths):
        if length > max_length:
            e = examples[i]
            where = f"task {e.get('task')!r}, row {e.get('source_index')}" if "task" in e else f"row {i}"
            raise ValueError(
                f"training example {i} ({where}) is {length} tokens of prompt + completion, longer than "
                f"max_length={max_length}; raise max_length (the longest example has {max(lengths)} tokens) "
                "or drop that row"
            )
    return lengths


def _as_examples(task: Task | str | None, train_rows: Iterable[Mapping]) -> list[dict]:
    if task is not None:
        return sft_examples(task, train_rows)
    examples = [dict(e) for e in train_rows]
    for i, e in enumerate(examples):
        if not isinstance(e.get("prompt"), str) or not isinstance(e.get("completion"), str):
            raise ValueError(
                f"train_rows[{i}] has no 'prompt'/'completion' strings (fields: {sorted(e)}); pass task=... for "
                "rows of a task, or rows from sft_examples()/mix_tasks()"
            )
    return examples


def _fingerprint(examples: Sequence[Mapping]) -> str:
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e["prompt"], e["completion"]]).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- files


def _write_json(path: Path, record: Mapping) -> None:
    """Atomically (temp file + rename): a kill mid-write never leaves half a file."""
    write_atomic(path, json.dumps(record, indent=2, default=str) + "\n")


def read_training_info(adapter_dir: str | Path) -> dict:
    """The ``training.json`` of a finished adapter folder."""
    path = Path(adapter_dir) / TRAINING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: {str(adapter_dir)!r} is not a finished SFT adapter folder")
    return json.loads(path.read_text())


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest *complete* checkpoint (the Trainer writes ``trainer_state.json`` last);
    a half-written one from a kill during saving is removed."""
    folder = Path(output_dir) / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    while found and not (found[-1] / "trainer_state.json").is_file():
        shutil.rmtree(found.pop())
    return found[-1] if found else None


def _model_id(model: str | os.PathLike) -> str:
    """How the base model is recorded: our two names as they are, a folder as its absolute path."""
    name = os.fspath(model)
    if name in (models.EMBEDDED_MODEL, models.TINY_MODEL):
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def _prepare_output(output_dir: Path, run: dict, overwrite: bool) -> str:
    """``"done"``, ``"resume"`` or ``"fresh"``; refuses a folder holding another run."""
    run_file = output_dir / RUN_FILE
    if output_dir.exists() and any(output_dir.iterdir()):
        if not run_file.is_file():
            raise ValueError(
                f"output_dir {str(output_dir)!r} is not empty and holds no SFT run ({RUN_FILE} missing); "
                "give a new or empty folder"
            )
        if overwrite:
            shutil.rmtree(output_dir)
        else:
            before = json.loads(run_file.read_text())
            before["settings"] = {RENAMED.get(k, k): v for k, v in before["settings"].items()}  # folders from before a rename
            if before["model"] != run["model"]:
                raise ValueError(
                    f"output_dir {str(output_dir)!r} holds an adapter trained on base model {before['model']!r}, "
                    f"but model={run['model']!r} was asked for; use another output_dir (or overwrite=True)"
                )
            changed = {
                key: (before["settings"].get(key), value) for key, value in run["settings"].items()
                if key not in _BOOKKEEPING and before["settings"].get(key) != value
            }
            if before["data_sha256"] != run["data_sha256"]:
                changed["training data"] = (f"{before['n_examples']} examples", f"{run['n_examples']} examples, other rows")
            if changed:
                listed = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in ((k, *v) for k, v in changed.items()))
                raise ValueError(
                    f"output_dir {str(output_dir)!r} holds a run with other settings ({listed}); "
                    "use another output_dir, or overwrite=True to start over"
                )
            if (output_dir / TRAINING_FILE).is_file():
                return "done"
            return "resume"
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_file, run)
    return "fresh"


# --------------------------------------------------------------------------- training


def process_state(settings: SFTSettings) -> Any:
    """accelerate's view of the processes (one in a notebook, several under ``accelerate launch``),
    set up the way the Trainer sets it up, so both agree on ranks and backend."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=models.pick_device(settings.device).type == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU"))


def _precision(settings: SFTSettings, device: torch.device) -> torch.dtype:
    dtype = models.pick_dtype(settings.precision, device)
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise RuntimeError(
            f"precision={settings.precision!r} needs bf16, which this GPU ({torch.cuda.get_device_name()}) lacks; "
            "use precision='auto' (fp16 here) or 'fp32'"
        )
    return dtype


def load_base(model: str | os.PathLike, settings: SFTSettings) -> torch.nn.Module:
    """The base model to put LoRA on: fp32 on CPU, bf16/fp16 on GPU, 4-bit when asked (CUDA only)."""
    device = models.pick_device(settings.device)
    dtype = _precision(settings, device)
    base = models.load_model(model, device=device, dtype=dtype, load_in_4bit=settings.load_in_4bit)
    if settings.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        # casts norms to fp32 and makes the inputs require grads, as QLoRA training needs
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=settings.gradient_checkpointing)
    return base


def make_trainer(
    settings: SFTSettings,
    *,
    model: str | os.PathLike,
    examples: Sequence[Mapping],
    output_dir: str | Path,
    tokenizer: "PreTrainedTokenizerBase | None" = None,
    callbacks: Sequence[TrainerCallback] = (),
    progress: bool = True,
) -> "SFTTrainer":
    """TRL's ``SFTTrainer`` for prompt/completion ``examples`` (EOS already appended), with
    LoRA from :func:`models.lora_config` and checkpoints in ``output_dir/checkpoints``."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    tokenizer = tokenizer or models.load_tokenizer(model)
    base = load_base(model, settings)
    dtype = next(p for p in base.parameters() if p.is_floating_point()).dtype
    if settings.load_in_4bit:
        dtype = base.config.quantization_config.bnb_4bit_compute_dtype
    config = SFTConfig(
        output_dir=str(Path(output_dir) / CHECKPOINTS),
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        lr_scheduler_type=settings.lr_scheduler,
        # transformers 5 has no warmup_ratio: warmup_steps below 1 is the fraction of the steps (validated to [0, 1) above)
        warmup_steps=float(settings.warmup_ratio),
        weight_decay=settings.weight_decay,
        seed=settings.seed,
        max_length=settings.max_length,
        packing=settings.packing,
        completion_only_loss=True,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=models.pick_device(settings.device).type == "cpu",
        activation_checkpointing=settings.gradient_checkpointing,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,  # the newest and, should a kill hit its writing, the one before
        logging_steps=settings.logging_steps,
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )
    lora = models.lora_config(
        r=settings.lora_r, alpha=settings.lora_alpha, dropout=settings.lora_dropout, bias=settings.lora_bias,
        target_modules=settings.lora_target_modules,
    )
    with models._quiet(progress_bars=True), data.quiet_progress():  # datasets' per-map bars, five even for 100 rows
        return SFTTrainer(
            model=base,
            args=config,
            train_dataset=datasets.Dataset.from_list([dict(e) for e in examples]),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[NonFiniteGuard(settings.max_skipped_updates), *callbacks],  # first: later callbacks see good weights
        )


def train_sft(
    settings: SFTSettings,
    *,
    model: str | os.PathLike,
    train_rows: Iterable[Mapping],
    output_dir: str | Path,
    task: Task | str | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Train a LoRA adapter and return its folder (``output_dir``).

    ``train_rows`` are rows of ``task``, or (``task=None``) prompt/completion rows from
    :func:`sft_examples` / :func:`mix_tasks`. ``model`` is a name or folder: we load our
    own copy, so a model you hold stays untouched.

    Run it again with the same arguments after an interruption and it resumes from the
    last checkpoint, ending with the same adapter as an uninterrupted run; after a
    finished run it returns at once. Other settings in the same folder are refused
    (``overwrite=True`` starts over).
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"model must be a model name or folder (got {type(model).__name__}); train_sft loads its own copy "
            "so the model you hold stays unchanged"
        )
    output_dir = Path(output_dir).expanduser()
    examples = _as_examples(task, train_rows)
    if not examples:
        raise ValueError(f"no training rows{f' for task {get_task(task).name!r}' if task is not None else ''}: train_rows is empty")
    tokenizer = models.load_tokenizer(model)
    if tokenizer.eos_token is None:
        raise ValueError(f"the tokenizer of {os.fspath(model)!r} has no EOS token; the completion needs one to teach stopping")
    examples = [{**e, "completion": e["completion"] + tokenizer.eos_token} for e in examples]
    lengths = check_lengths(tokenizer, examples, settings.max_length)
    tasks = sorted({e.get("task", "custom") for e in examples})
    run = {
        "model": _model_id(model),
        "tasks": tasks,
        "settings": settings.to_dict(),
        "n_examples": len(examples),
        "data_sha256": _fingerprint(examples),
    }
    processes = process_state(settings)
    with processes.main_process_first():  # under accelerate launch the main process sets the folder up, the others find it
        state = _prepare_output(output_dir, run, overwrite and processes.is_main_process)
        resume_from = last_checkpoint(output_dir) if state == "resume" else None
    if state == "done":
        print(f"SFT: {output_dir} already holds the finished adapter of this run; loading nothing, training nothing.")
        return output_dir
    if resume_from is not None:
        print(f"SFT: resuming from {resume_from}")

    trainer = make_trainer(settings, model=model, examples=examples, output_dir=output_dir,
                           tokenizer=tokenizer, callbacks=callbacks, progress=progress)
    start = time.perf_counter()
    with models._quiet(progress_bars=True):
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - start

    adapter = trainer.model
    # DeepSpeed: every process takes part in gathering the weights (ZeRO-3 shards them); one process writes
    weights = trainer.accelerator.get_state_dict(trainer.model_wrapped) if trainer.is_deepspeed_enabled else None
    lora = adapter.peft_config["default"]
    saved = weights if weights is not None else {n: p for n, p in adapter.named_parameters() if p.requires_grad}
    if not all(bool(torch.isfinite(t).all()) for t in saved.values()):  # the guard rolls such weights back; never save them
        raise NonFiniteWeights(f"the trained LoRA weights hold NaN/inf; nothing was saved to {str(output_dir)!r}")
    if processes.is_main_process:
        with models._quiet():
            adapter.save_pretrained(output_dir, state_dict=weights)  # names the resolved base folder: PEFT checks it without the hub
        lora.base_model_name_or_path = run["model"]  # portable: "embedded", not this machine's cache path
        lora.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
    losses = [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e]
    tokens = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    trainable, total = models.trainable_parameters(adapter)
    from nlu_helpers.evaluation import library_versions

    info = {
        **run,
        "lora": {"r": lora.r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout, "bias": lora.bias,
                 "use_rslora": lora.use_rslora,
                 "target_modules": sorted(lora.target_modules) if isinstance(lora.target_modules, (set, list)) else lora.target_modules},
        "steps": trainer.state.global_step,
        "epochs_done": trainer.state.epoch,
        "final_loss": losses[-1][1] if losses else None,
        "mean_loss": output.training_loss,
        "losses": losses,
        "tokens_seen": tokens[-1] if tokens else None,
        "max_example_tokens": max(lengths),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "seconds": round(seconds, 2),
        "resumed_from_step": int(resume_from.name.split("-")[-1]) if resume_from else None,
        "skipped_updates": next(c.skipped for c in trainer.callback_handler.callbacks if isinstance(c, NonFiniteGuard)),
        "device": str(models.pick_device(settings.device)),
        "versions": library_versions(),
    }
    if processes.is_main_process:
        if not settings.keep_checkpoints:
            shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)
        _write_json(output_dir / TRAINING_FILE, info)  # last: marks the folder complete
    processes.wait_for_everyone()  # no process returns before the folder is complete
    return output_dir


# --------------------------------------------------------------------------- using the adapter


def load_trained(
    adapter_dir: str | Path,
    *,
    base: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    trainable: bool = False,
) -> tuple["PeftModel", "PreTrainedTokenizerBase"]:
    """The base model with the adapter (and the tokenizer saved beside it).

    ``base`` defaults to the model the adapter was trained on; naming another one gets
    ``models.load_model``'s error. ``trainable=True`` keeps the adapter trainable, to
    start PPO from it (its frozen copy is then the reference policy).
    """
    adapter_dir = Path(adapter_dir).expanduser()
    if base is None:
        base = read_training_info(adapter_dir)["model"]
    model = models.load_model(base, adapter=adapter_dir, device=device, dtype=dtype, trainable_adapter=trainable)
    return model, models.load_tokenizer(adapter_dir)


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, *, dtype: str | torch.dtype = "auto") -> Path:
    """Fold the LoRA weights into the base model and save a plain model folder (with the tokenizer).

    The merged model needs no PEFT to load and runs a little faster; the adapter stays
    the smaller thing to keep. Merging is done on the CPU so it works without a GPU.
    """
    adapter_dir, out_dir = Path(adapter_dir).expanduser(), Path(out_dir).expanduser()
    info = read_training_info(adapter_dir)
    model, tokenizer = load_trained(adapter_dir, device="cpu", dtype=dtype)
    with models._quiet():
        merged = model.merge_and_unload()
        merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _write_json(out_dir / TRAINING_FILE, {**info, "merged_from": str(adapter_dir.resolve())})
    return out_dir
