"""The workbook's one command line: ``nlu-workbook <command>`` (or ``python -m nlu_helpers <command>``).

    setup          fetch the embedded model and the offline data set
    run            execute the notebooks in order with papermill, under a profile
    eval           evaluate a model (and adapter) on a task; writes a results file as notebook 02 does
    sft            LoRA SFT as notebook 03 trains it
    ppo            PPO as notebook 04 trains it
    tasks          list the task registry; ``tasks check FILE`` reports on a task file
    launch-config  the path of a shipped ``accelerate`` config

``sft`` and ``ppo`` also run under ``accelerate launch -m nlu_helpers ppo ...``, on every GPU of
one machine or several. Their options are dataclass fields read by ``transformers.HfArgumentParser``
(:mod:`nlu_helpers.arguments`): the run's own plus every field of ``sft.SFTSettings`` or
``ppo.PPOConfig``; a settings field that is not given keeps the preset's value. ``--config FILE``
reads the same names from YAML, or a workbook profile (``--config paper`` takes notebook 03's or
04's values); the command line wins. Files go where the notebooks look for them:
``<output_dir>/adapters/sft-<task>``, ``<output_dir>/checkpoints/ppo-<task>``,
``<output_dir>/adapters/ppo-<task>``, ``<output_dir>/results/``.

Inputs are checked before any model is loaded: a bad value, a renamed option or an output folder
that cannot be written gets one line (``nlu-workbook ppo: error: ...``) and exit code 2. A run that
fails later also ends in one line, with exit code 1. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from nlu_helpers.arguments import (
    PROG, ArgumentParser, UsageError, bad_input, one_line, parse, ppo_config, sft_settings, split_values, suggest,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from nlu_helpers.ppo import PPOTrainer
    from nlu_helpers.tasks import Task

ACCELERATE_CONFIGS = ("single_gpu", "multi_gpu", "deepspeed_zero2", "deepspeed_zero3")


# --------------------------------------------------------------------------- checks (before any model is loaded)


def check_task(name: str) -> "Task":
    """The registry task (or task file) ``name``, or a one-line error with the closest names."""
    from nlu_helpers.tasks import TASKS, get_task

    try:
        return get_task(name)
    except KeyError as error:
        raise UsageError(one_line(error) + suggest(str(name), sorted(TASKS))) from None
    except ValueError as error:  # a task file with problems
        raise UsageError(one_line(error)) from None


def check_model(name: str) -> None:
    """'embedded', 'tiny-random', a folder holding a model, or something that can be a hub id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from nlu_helpers import models

    allowed = f"allowed: {models.EMBEDDED_MODEL!r}, {models.TINY_MODEL!r}, a model folder or a hub id such as 'Qwen/Qwen2.5-0.5B-Instruct'"
    if name in (models.EMBEDDED_MODEL, models.TINY_MODEL):
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"model {name!r} is a folder without a model in it (no config.json); {allowed}")
        return
    if path.exists() or models._looks_like_path(name) or ("/" in name and Path(name.split("/")[0]).is_dir()):
        raise UsageError(f"model {name!r}: no such model folder; {allowed}")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise UsageError(f"model {name!r} is neither a folder nor a hub id; {allowed}") from None


def check_writable(folder: str | os.PathLike, what: str = "output_dir", shown: str | os.PathLike | None = None) -> None:
    """Refuse a folder that cannot be written, before anything is trained: a file on its path, or no
    write access. Nothing is created: the nearest existing folder above it is probed with a temp file.
    ``shown`` is the value the user gave (``folder`` may be a folder inside it)."""
    shown = str(folder if shown is None else shown)
    target = Path(folder).expanduser()
    probe = target
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{what} {shown!r}: {str(probe)!r} is a file, not a folder; give a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise UsageError(f"{what} {shown!r} cannot be written ({error.strerror} in {str(probe)!r}); give a folder you can write to") from None


def check_count(name: str, value: Any, minimum: int = 1, null: str = "") -> None:
    """``value`` is None (when ``null`` says what that means) or at least ``minimum``."""
    if value is not None and value < minimum:
        raise UsageError(f"{name} must be >= {minimum}{f' (null: {null})' if null else ''}, got {value!r}")


def start_adapter_dir(start_from: str | os.PathLike, output_dir: str | os.PathLike, task_name: str) -> Path | None:
    """Where PPO starts, as notebook 04's ``start_from``: None for the base model, else an adapter folder."""
    if str(start_from) == "base":
        return None
    folder = Path(output_dir) / "adapters" / f"sft-{task_name}" if str(start_from) == "sft" else Path(start_from).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise UsageError(f"start_from={str(start_from)!r}: {str(folder)!r} holds no adapter (no adapter_config.json); allowed: "
                         "'base', 'sft' (after `nlu-workbook sft` with the same output_dir) or an adapter folder")
    return folder


# --------------------------------------------------------------------------- weights of every process


def dump_weights(module: "torch.nn.Module", folder: str | os.PathLike, rank: int) -> Path:
    """Write the module's trainable weights to ``<folder>/rank-<rank>.safetensors``: every process
    calls it with its own copy, and equal files prove the processes ended with the same model."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().to("cpu").contiguous().clone() for name, p in module.named_parameters() if p.requires_grad}
    if not tensors:
        raise ValueError("the module has no trainable weights to dump")
    path = folder / f"rank-{rank}.safetensors"
    save_file(tensors, str(path))
    return path


def _weights_dump_callback(folder: str | os.PathLike) -> Any:
    """A Trainer callback that dumps each process's trainable weights when training ends."""
    from accelerate import PartialState
    from transformers import TrainerCallback

    class WeightsDump(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 - Trainer's signature
            dump_weights(model, folder, PartialState().process_index)

    return WeightsDump()


# --------------------------------------------------------------------------- sft, ppo, eval


def _check_run(rest: Mapping[str, Any], method: str, folders: Sequence[str]) -> "Task":
    """The checks ``sft`` and ``ppo`` share: task, model, rows, and every folder they will write."""
    task = check_task(rest["task"])
    check_model(rest["model"])
    check_count("train_limit", rest["train_limit"], null="the whole split")
    for folder in folders:
        check_writable(Path(rest["output_dir"]) / folder / f"{method}-{task.name}", shown=rest["output_dir"])
    if rest["weights_dump"]:
        check_writable(rest["weights_dump"], "weights_dump")
    return task


def run_sft(values: Mapping[str, Any]) -> Path:
    """Train (or resume, or find finished) the SFT adapter that notebook 03's parameters describe."""
    from nlu_helpers import data, models, sft

    settings = sft_settings(values)
    _, rest = split_values(values, sft.SFTSettings)
    task = _check_run(rest, "sft", ["adapters"])
    with bad_input():
        models.pick_device(settings.device)
        rows = data.load_split(task, "train", limit=rest["train_limit"], shuffle_seed=settings.seed)
    adapter_dir = Path(rest["output_dir"]) / "adapters" / f"sft-{task.name}"
    state = sft.process_state(settings)
    if state.is_main_process:
        print(f"SFT on {state.num_processes} process(es): model {rest['model']!r}, task {task.name!r}, {len(rows)} rows, "
              f"global batch {settings.batch_size * settings.gradient_accumulation_steps * state.num_processes}", flush=True)
    callbacks = [_weights_dump_callback(rest["weights_dump"])] if rest["weights_dump"] else []
    path = sft.train_sft(settings, model=rest["model"], train_rows=rows, task=task, output_dir=adapter_dir,
                         callbacks=callbacks, overwrite=bool(rest["restart"]), progress=state.is_main_process)
    if state.is_main_process:
        info = sft.read_training_info(path)
        print(json.dumps({"adapter": str(path), "steps": info["steps"], "final_loss": info["final_loss"],
                          "skipped_updates": info.get("skipped_updates", 0), "seconds": info["seconds"]}), flush=True)
    return path


def run_ppo(values: Mapping[str, Any]) -> "PPOTrainer":
    """Train PPO as notebook 04 does, resuming from its checkpoint when there is one (unless ``restart``)."""
    from nlu_helpers import checkpoints, data, models, ppo
    from nlu_helpers.distributed import make_accelerator

    config = ppo_config(values)
    _, rest = split_values(values, ppo.PPOConfig)
    check_count("ppo_steps", rest["ppo_steps"], null="`passes` passes over the training rows")
    check_count("checkpoint_every", rest["checkpoint_every"])
    task = _check_run(rest, "ppo", ["adapters", "checkpoints"])
    start_adapter = start_adapter_dir(rest["start_from"], rest["output_dir"], task.name)
    checkpoint = Path(rest["output_dir"]) / "checkpoints" / f"ppo-{task.name}"  # where train_ppo keeps it
    resumed = None
    with bad_input():
        models.pick_device(rest["device"])
        for found in (checkpoint, checkpoint.with_name(checkpoint.name + ".old")):  # .old: a kill between save's two renames
            if not rest["restart"] and (found / checkpoints.STATE_FILE).is_file():
                resumed = checkpoints.verify(found)  # a damaged checkpoint is named now, not after the model is built
                break
        rows = data.load_split(task, "train", limit=rest["train_limit"], shuffle_seed=config.seed)
    accelerator = make_accelerator(config, rest["device"])
    if accelerator.is_main_process:
        print(f"PPO on {accelerator.num_processes} process(es): model {rest['model']!r}, task {task.name!r}, {len(rows)} rows, "
              f"{config.prompts_per_step * accelerator.num_processes} prompts per step", flush=True)
        if resumed is not None:
            print(f"PPO: resuming from {checkpoint} (step {resumed.get('step_count', resumed.get('step', '?'))})", flush=True)
    trainer = ppo.train_ppo(
        rest["model"], task, rows, config, steps=rest["ppo_steps"], sft_adapter=start_adapter,
        output_dir=rest["output_dir"], checkpoint_every=rest["checkpoint_every"], resume=not rest["restart"],
        progress=accelerator.is_main_process, device=rest["device"], accelerator=accelerator,
    )
    if rest["weights_dump"]:
        dump_weights(trainer.ac, rest["weights_dump"], accelerator.process_index)
    if accelerator.is_main_process:
        last = trainer.history[-1] if trainer.history else {}
        print(json.dumps({"adapter": str(Path(rest["output_dir"]) / "adapters" / f"ppo-{task.name}"), "steps": trainer.step_count,
                          **{k: last[k] for k in ("reward", "accuracy", "kl", "skipped_updates") if k in last}}), flush=True)
    accelerator.wait_for_everyone()
    return trainer


def _stage(adapter: str | None, shots: int) -> str:
    """The results file's stage, as the notebooks name them."""
    if adapter is None:
        return "few-shot" if shots else "zero-shot"
    kind = Path(adapter).name.split("-", 1)[0]
    return kind if kind in ("sft", "ppo") else "adapter"


def run_eval(values: Mapping[str, Any]) -> list[Path]:
    """Evaluate as notebook 02 does, one mode and one number of demonstrations; a results file per split."""
    from nlu_helpers import data, evaluation, models, results
    from nlu_helpers.prompts import select_shots

    task = check_task(values["task"])
    check_model(values["model"])
    adapter = values["adapter"]
    if adapter is not None and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
        raise UsageError(f"adapter {adapter!r} is not an adapter folder (no adapter_config.json); give one that `nlu-workbook sft` "
                         "or `ppo` wrote, e.g. <output_dir>/adapters/sft-<task>")
    check_count("shots", values["shots"], minimum=0)
    check_count("eval_limit", values["eval_limit"], null="all rows")
    for name in ("batch_size", "max_new_tokens"):
        check_count(name, values[name])
    if values["calibrate"] and (values["mode"] != "score" or task.kind != "classification"):
        raise UsageError(f"--calibrate needs --mode score on a classification task; got --mode {values['mode']} on {task.name!r} ({task.kind})")
    splits = [values["split"]] if values["split"] else list(task.eval_splits)
    if not splits:
        raise UsageError(f"task {task.name!r} has no evaluation split; name one with --split")
    check_writable(Path(values["output_dir"]) / results.RESULTS, shown=values["output_dir"])
    with bad_input():
        models.pick_device(values["device"])
        rows = {split: data.load_split(task, split, limit=values["eval_limit"], shuffle_seed=values["seed"]) for split in splits}
        shots = select_shots(data.demonstration_pool(task), values["shots"], seed=values["seed"]) if values["shots"] else []
    llm = models.load_model(values["model"], adapter=adapter, device=values["device"])
    tokenizer = models.load_tokenizer(values["model"])
    stage = values["stage"] or _stage(adapter, len(shots))
    mode = values["mode"] + ("-calibrated" if values["calibrate"] else "")
    paths = []
    for split, split_rows in rows.items():
        result = evaluation.evaluate(
            llm, tokenizer, task, split_rows, mode=values["mode"], shots=shots, batch_size=values["batch_size"],
            max_new_tokens=values["max_new_tokens"], calibrate=values["calibrate"], random_fill=True,
            n_bootstrap=values["n_bootstrap"], seed=values["seed"], split=split, model_name=values["model"], adapter=adapter,
        )
        record = result.to_dict() | {"stage": stage, "command": "eval"}
        path = results.save_result(record, values["output_dir"], results.result_name("eval", stage, task.name, split, mode, f"k{len(shots)}"),
                                   result.predictions)
        print(json.dumps({"result": str(path), "stage": stage, "split": split, "mode": mode, "k": len(shots),
                          task.main_metric: round(result.main, 4), "ci95": result.ci.get(task.main_metric),
                          "unparseable": result.unparseable, "n": result.n}), flush=True)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- the other commands


def accelerate_config(name: str) -> Path:
    """The path of a shipped ``accelerate`` config file (for ``accelerate launch --config_file``)."""
    key = str(name).strip().removesuffix(".yaml").replace("-", "_")
    if key not in ACCELERATE_CONFIGS:
        raise UsageError(f"unknown accelerate config {name!r}{suggest(key, ACCELERATE_CONFIGS)}; allowed: {', '.join(ACCELERATE_CONFIGS)}")
    return Path(str(resources.files("nlu_helpers") / "accelerate_configs" / f"{key}.yaml"))


def setup(profile: str | None = None) -> None:
    """Fetch and prepare everything the offline default needs (idempotent, fast when done), and with
    ``profile`` the data of every task that profile runs (e.g. the offline suite's, for ``cpu-suite``)."""
    from nlu_helpers import data, models
    from nlu_helpers.assets import cache_dir
    from nlu_helpers.runner import load_profile
    from nlu_helpers.tasks import OFFLINE_TASK, get_task

    start = time.perf_counter()
    model_dir, tiny_dir = models.embedded_model_dir(), models.tiny_model_dir()
    sizes = {split: len(data.load_split(OFFLINE_TASK, split)) for split in ("train", "validation", "test")}
    print(f"setup: cache {cache_dir()}")
    print(f"setup: embedded model {model_dir}; tiny test model {tiny_dir}")
    print(f"setup: offline task {OFFLINE_TASK}: {sizes} ({time.perf_counter() - start:.1f} s)")
    if profile is None:
        return
    parameters = load_profile(profile)["parameters"]
    for name in dict.fromkeys([parameters.get("task"), *(parameters.get("tasks") or [])]):
        if name and name != OFFLINE_TASK:
            task = get_task(name)  # fetches a suite task's rows on first use
            if task.data_files:
                print(f"setup: task {task.name} for profile {profile}: {_data_source(task)}")


def _data_source(task: "Task") -> str:
    if task.data_files:
        return ", ".join(f"{split}: {path}" for split, path in task.data_files.items())
    if task.hub_id:
        return task.hub_id + (f" ({task.hub_config})" if task.hub_config else "")
    return "embedded (offline)"


def _suite_rows(listed: set[str]) -> list[tuple[str, str, str, str]]:
    """The offline suite's packaged task files not loaded yet, read without fetching their data."""
    import yaml

    from nlu_helpers.suite import suite_task_files
    from nlu_helpers.taskfile import _Loader

    rows = []
    for name, path in suite_task_files().items():
        if name not in listed:
            spec = yaml.load(path.read_text(), Loader=_Loader)
            labels = spec["labels"].values() if isinstance(spec["labels"], dict) else spec["labels"]
            rows.append((name, "classification", " / ".join(map(str, labels)),
                         f"BIG-bench {spec['bigbench']} (offline suite: fetched on first use)"))
    return rows


def tasks_table() -> str:
    """The registry, one task a line: name, kind, label words, where its data comes from."""
    from nlu_helpers.tasks import TASKS

    rows = [(t.name, t.kind, "number 0-5" if t.kind == "regression" else " / ".join(t.answer_words), _data_source(t))
            for t in TASKS.values()]
    rows += _suite_rows({row[0] for row in rows})
    widths = [max(len(r[i]) for r in rows + [("task", "kind", "labels", "data")]) for i in range(3)]
    return "\n".join(f"{a:{widths[0]}}  {b:{widths[1]}}  {c:{widths[2]}}  {d}" for a, b, c, d in [("task", "kind", "labels", "data"), *rows])


def _tasks(argv: Sequence[str]) -> int:
    parser = ArgumentParser(prog=f"{PROG} tasks", description="List the task registry, or check a task file.")
    parser.add_argument("action", nargs="?", choices=["check"], help="check FILE: a report on a task file (prompt, labels, problems)")
    parser.add_argument("file", nargs="?", help="the task file to check")
    args = parser.parse_args(argv)
    if args.action is None:
        if args.file:
            raise UsageError(f"unexpected {args.file!r}; use `{PROG} tasks check FILE`")
        print(tasks_table())
        return 0
    if not args.file:
        raise UsageError(f"tasks check needs a FILE: `{PROG} tasks check my-task.yaml`")
    from nlu_helpers import tasks

    check = getattr(tasks, "check_task_file", None)
    if check is None:
        raise UsageError("this version of nlu_helpers cannot check task files (nlu_helpers.tasks.check_task_file is missing)")
    if not Path(args.file).expanduser().is_file():
        raise UsageError(f"task file {args.file!r} does not exist")
    report = check(args.file)
    print(report)
    return 0 if report.rstrip().splitlines()[-1].startswith("ok") else 1


def _launch_config(argv: Sequence[str]) -> int:
    parser = ArgumentParser(prog=f"{PROG} launch-config", description="The path of a shipped accelerate config "
                             "(for `accelerate launch --config_file`); without a name, all of them.")
    parser.add_argument("name", nargs="?", help=", ".join(ACCELERATE_CONFIGS))
    args = parser.parse_args(argv)
    if args.name:
        print(accelerate_config(args.name))
    else:
        for name in ACCELERATE_CONFIGS:
            print(f"{name:16s} {accelerate_config(name)}")
    return 0


def _run(argv: Sequence[str]) -> int:
    from nlu_helpers import runner

    parser = ArgumentParser(prog=f"{PROG} run", description=runner.__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--profile", default="cpu-demo", help="a shipped profile: " + ", ".join(runner.profiles()))
    parser.add_argument("--output", default=None, help="run folder (default runs/<timestamp>-<profile>)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its first unfinished notebook")
    parser.add_argument("--only", nargs="*", default=None, help="notebook numbers or names to run")
    parser.add_argument("--skip", nargs="*", default=None, help="notebook numbers or names to leave out")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="override a parameter")
    parser.add_argument("--force", action="store_true",
                        help="go on with a changed profile or parameters: from the first notebook they change, run again")
    parser.add_argument("--readme", default=None, metavar="FILE",
                        help="afterwards, put the paper-shaped table in FILE's block for the profile "
                             "(<!-- run-table: PROFILE --> ... <!-- /run-table -->), if it has one")
    return runner.main(parser.parse_args(argv))


def _setup(argv: Sequence[str]) -> int:
    parser = ArgumentParser(prog=f"{PROG} setup", description=setup.__doc__)
    parser.add_argument("--profile", default=None, help="also fetch the data of every task this profile runs (e.g. cpu-suite)")
    args = parser.parse_args(argv)
    if args.profile is not None:
        from nlu_helpers.runner import load_profile

        try:
            load_profile(args.profile)
        except ValueError as error:
            raise UsageError(str(error)) from None
    setup(args.profile)
    return 0


def _train_or_eval(command: str) -> Callable[[Sequence[str]], int]:
    run = {"eval": run_eval, "sft": run_sft, "ppo": run_ppo}[command]

    def execute(argv: Sequence[str]) -> int:
        run(parse(command, argv))
        return 0

    return execute


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "setup": (_setup, "fetch the embedded model and the offline data set"),
    "run": (_run, "execute the notebooks in order with papermill, under a profile"),
    "eval": (_train_or_eval("eval"), "evaluate a model (and adapter) on a task; writes a results file"),
    "sft": (_train_or_eval("sft"), "LoRA SFT, as notebook 03 (also under accelerate launch)"),
    "ppo": (_train_or_eval("ppo"), "PPO, as notebook 04 (also under accelerate launch)"),
    "tasks": (_tasks, "list the task registry; `tasks check FILE` reports on a task file"),
    "launch-config": (_launch_config, "the path of a shipped accelerate config"),
}


def _overview() -> str:
    lines = [f"usage: {PROG} <command> [options]   (or: python -m nlu_helpers <command>; <command> --help for its options)", ""]
    lines += [f"  {name:14s} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines + ["", "--debug (with any command) shows a traceback instead of a one-line error."])


def main(argv: Sequence[str] | None = None) -> int:
    """``nlu-workbook <command> ...``; returns the exit code (0 done, 1 failed, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_overview(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    prog = f"{PROG} {name}" if name in COMMANDS else PROG
    try:
        if name not in COMMANDS:
            raise UsageError(f"unknown command {name!r}{suggest(name, list(COMMANDS))}; commands: {', '.join(COMMANDS)}")
        return COMMANDS[name][0](rest)
    except UsageError as error:
        if debug:
            raise
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - a run that failed after its inputs were checked: one line, unless --debug
        if debug:
            raise
        # a new line first: a progress bar may be half-drawn on the current one
        print(f"\n{prog}: error: {one_line(error)} (--debug shows the traceback)", file=sys.stderr)
        return 1
