"""Command-line arguments from dataclasses, for ``nlu-workbook sft``, ``ppo`` and ``eval``.

``transformers.HfArgumentParser`` makes one option per dataclass field: the run's own
(:class:`RunArguments`, :class:`PPOArguments`, :class:`EvalArguments`) and every field of
``sft.SFTSettings`` or ``ppo.PPOConfig``, with the field's comment as its help. Only the options
given count (a settings field that is not given keeps the preset's value); ``--config`` adds the
same names from a YAML file or a workbook profile, and the command line wins. Values are checked
as they are read (``--learning-rate fast`` and a config key typo are refused, with the closest
names), and a renamed option is refused with its new name. Errors are :class:`UsageError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import inspect
import math
import os
import re
import types
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import yaml

if TYPE_CHECKING:  # pragma: no cover
    from nlu_helpers.ppo import PPOConfig
    from nlu_helpers.sft import SFTSettings

PROG = "nlu-workbook"
SFT_PRESETS = ("cpu-demo", "paper")
PRESET_WHEN_NULL = {"learning_rate", "temperature"}  # as in notebook 04: null means "the preset's value"
# The notebook whose profile section a command takes; notebook 04's max_new_tokens is for evaluation there,
# not PPO's rollout range, so a profile's value is not taken for it.
NOTEBOOK_OF = {"sft": "03_lora_sft", "ppo": "04_ppo", "eval": "02_zero_few_shot"}
PROFILE_SKIPS = {"sft": set(), "ppo": {"max_new_tokens"}, "eval": set()}
# Old option names -> (new name, a note). On the command line and in flat config files they are
# refused with the new name; a profile's keys are notebook parameter names and are translated.
RENAMED = {
    "mini_batch_size": ("batch_size", ""),
    "grad_accum": ("gradient_accumulation_steps", ""),
    "target_modules": ("lora_target_modules", ""),
    "overwrite": ("restart", ""),
    "resume": ("restart", "resuming is the default; --restart starts over"),
    "k": ("shots", ""),
}


class UsageError(ValueError):
    """A bad command line or input, found before any work: one line, exit code 2."""


# --------------------------------------------------------------------------- arguments


@dataclass
class RunArguments:
    """What a training command trains on and where it writes (notebook 03's and 04's names)."""

    model: str = field(default="embedded", metadata={"help": "base model: 'embedded', 'tiny-random', a model folder or a hub id"})
    task: str = field(default="movie-snippets", metadata={"help": "registry task ('sst2', 'rte', ...; `nlu-workbook tasks`) or a task file"})
    train_limit: int | None = field(default=None, metadata={"help": "training rows, a seeded sample (null: the whole split)"})
    output_dir: str = field(default="runs/cli", metadata={"help": "run folder: adapters/, checkpoints/ and results/ go there"})
    preset: str = field(default="cpu-demo", metadata={"help": "settings the other options change: cpu-demo, paper (ppo also: smoke)"})
    restart: bool = field(default=False, metadata={"help": "start over instead of resuming (or finding finished) the run in output_dir"})
    weights_dump: str | None = field(default=None, metadata={"help": "folder where every process writes its trained weights as "
                                                                     "rank-<i>.safetensors (to check that processes agree)"})
    config: str | None = field(default=None, metadata={"help": "YAML file of these names, or a profile: paper, cpu-demo, smoke, "
                                                               "colab-t4; the command line wins"})


@dataclass
class PPOArguments:
    """PPO's run parameters besides PPOConfig (notebook 04's names)."""

    ppo_steps: int | None = field(default=None, metadata={"help": "PPO steps in total (null: `passes` passes over the training rows)"})
    start_from: str = field(default="base", metadata={"help": "'base' (a fresh adapter), 'sft' (<output_dir>/adapters/sft-<task>) "
                                                              "or an adapter folder"})
    checkpoint_every: int | None = field(default=None, metadata={"help": "a checkpoint every N steps (one is always written at the end)"})
    device: str = field(default="auto", metadata={"help": "'auto' (this process's GPU if there is one, else the CPU), 'cpu', 'cuda'"})


@dataclass
class EvalArguments:
    """One evaluation, as notebook 02 runs it (one mode, one number of demonstrations)."""

    model: str = field(default="embedded", metadata={"help": "base model: 'embedded', 'tiny-random', a model folder or a hub id"})
    adapter: str | None = field(default=None, metadata={"help": "a LoRA adapter folder on top of the model (adapters/sft-<task>, ...)"})
    task: str = field(default="movie-snippets", metadata={"help": "registry task or a task file"})
    split: str | None = field(default=None, metadata={"help": "null: the task's evaluation split(s) (MNLI: matched and mismatched)"})
    mode: Literal["generate", "score"] = field(default="generate", metadata={"help": "generate an answer and parse it, or "
                                                                                     "score the label words"})
    shots: int = field(default=0, metadata={"help": "demonstrations in the prompt (seeded sample of the training split)"})
    eval_limit: int | None = field(default=200, metadata={"help": "rows per split, a seeded sample (null: all)"})
    calibrate: bool = field(default=False, metadata={"help": "contextual calibration (score mode, classification tasks)"})
    batch_size: int = field(default=16, metadata={"help": "prompts per forward pass"})
    max_new_tokens: int = field(default=8, metadata={"help": "answer length in generate mode"})
    n_bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for the 95% intervals"})
    seed: int = field(default=0, metadata={"help": "rows, demonstrations and bootstrap"})
    stage: str | None = field(default=None, metadata={"help": "stage in the results file (null: zero-shot/few-shot, sft or ppo "
                                                              "from the adapter's folder name)"})
    output_dir: str = field(default="runs/cli", metadata={"help": "the result goes to <output_dir>/results/"})
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu', 'cuda'"})
    config: str | None = field(default=None, metadata={"help": "YAML file of these names, or a profile (notebook 02's values)"})


# --------------------------------------------------------------------------- values


class _Value:
    """An argparse ``type``: text from the command line, or a value from a YAML file, checked.

    ``kind`` None means any YAML value (``"[12, 31]"`` is a list, ``"{a: 1}"`` a mapping)."""

    NULL = {"null", "none", "~"}

    def __init__(self, kind: type | None, nullable: bool):
        self.kind, self.nullable = kind, nullable
        self.__name__ = getattr(kind, "__name__", "value")

    def __call__(self, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in self.NULL):
            if self.nullable:
                return None
            raise argparse.ArgumentTypeError(f"null is not allowed here; give a {self._what()}")
        if self.kind is None:
            return _yaml(value) if isinstance(value, str) else value
        if self.kind is str:
            if isinstance(value, str):
                return value
        elif isinstance(value, str):
            try:
                number = int(value.strip()) if self.kind is int else float(value.strip())
            except ValueError:
                number = yaml.safe_load(value) if re.fullmatch(r"[+-]?\.(inf|nan)", value.strip(), re.I) else None  # YAML's .inf
            if number is not None:
                return self(number)
        elif self.kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        elif self.kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise argparse.ArgumentTypeError(f"{value!r} is not a finite number")
            return float(value)
        raise argparse.ArgumentTypeError(f"{value!r} is not a {self._what()}")

    def _what(self) -> str:
        return {int: "whole number", float: "number (e.g. 2e-4)", str: "text"}.get(self.kind, "value")


def _yaml(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a YAML value ({one_line(error)})") from None
    return float(text) if isinstance(value, str) and _NUMBER.match(value.strip()) else value  # YAML 1.1 reads 1e-2 as text


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _to_bool(value: Any) -> bool:
    from transformers.hf_argparser import string_to_bool

    if isinstance(value, bool) or isinstance(value, str):
        return string_to_bool(value)
    raise argparse.ArgumentTypeError(f"{value!r} is not true or false")


def _arg_type(hint: Any, nullable: bool = False) -> Any:
    """What HfArgumentParser gets as a field's type: bool and Literal as they are (flags, choices),
    int/float/str as checked values, anything else (tuples, unions, RewardConfig) as YAML."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal or hint is bool:
        return hint
    core = [a for a in args if a is not type(None)] if origin in (typing.Union, types.UnionType) else [hint]
    nullable = nullable or len(core) < len(args)
    return _Value(core[0], nullable) if len(core) == 1 and core[0] in (int, float, str) else _Value(None, True)


def _converter(hint: Any) -> Callable[[Any], Any]:
    """The same check for a value from a config file."""
    if hint is bool:
        return _to_bool
    if typing.get_origin(hint) is Literal:
        def choice(value: Any) -> Any:
            if value not in typing.get_args(hint):
                raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(map(str, typing.get_args(hint)))}")
            return value
        return choice
    return hint


def _field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` after each field in the class's source: the help text of its option."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    for line in source.splitlines():
        match = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if match:
            found.setdefault(match.group(1), match.group(2).strip())
    return found


def _view(cls: type, group: str, defaults: Mapping[str, Any] | None = None, nullable: set[str] = frozenset()) -> type:
    """A dataclass HfArgumentParser can read, one option per field of ``cls`` (types as in :func:`_arg_type`).

    Its fields default to ``argparse.SUPPRESS``, so a parse holds only the options given; the real
    defaults (the preset's, for settings) are in the help text and in the class's ``defaults``."""
    hints, comments = typing.get_type_hints(cls), _field_comments(cls)
    specs, real = [], {}
    for f in dataclasses.fields(cls):
        default = defaults[f.name] if defaults is not None else f.default
        text = f.metadata.get("help") or comments.get(f.name) or f"{cls.__name__} field"
        origin = f"{group.split()[0]} preset" if defaults is not None else "default"
        help_text = f"{text} ({origin}: {default!r})".replace("%", "%%")  # argparse %-formats help
        specs.append((f.name, _arg_type(hints[f.name], f.name in nullable), field(default=argparse.SUPPRESS, metadata={"help": help_text})))
        real[f.name] = default
    return dataclasses.make_dataclass(f"{cls.__name__}Options", specs, namespace={"_argument_group_name": group, "defaults": real})


@functools.cache
def _options(command: str) -> tuple[tuple[type, ...], dict[str, Callable[[Any], Any]], dict[str, Any]]:
    """(option dataclasses, a value check per name, defaults) of ``sft``, ``ppo`` or ``eval``."""
    from nlu_helpers import ppo, sft

    if command == "eval":
        views = (_view(EvalArguments, "evaluation"),)
    elif command == "sft":
        views = (_view(RunArguments, "run"), _view(sft.SFTSettings, "cpu-demo SFTSettings (--preset picks the base)",
                                                    {f.name: getattr(sft.CPU_DEMO, f.name) for f in dataclasses.fields(sft.SFTSettings)}))
    else:
        views = (_view(RunArguments, "run"), _view(PPOArguments, "PPO run"),
                 _view(ppo.PPOConfig, "cpu-demo PPOConfig (--preset picks the base)",
                       {f.name: getattr(ppo.CPU_DEMO, f.name) for f in dataclasses.fields(ppo.PPOConfig)}, PRESET_WHEN_NULL))
    converters = {f.name: _converter(f.type) for view in views for f in dataclasses.fields(view)}
    defaults = {name: value for view in views for name, value in view.defaults.items()}
    return views, converters, defaults


class OneLineErrors:
    """argparse errors become a :class:`UsageError` (one line) instead of usage text."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(re.sub(r"argument (--[\w-]+/)?(--[\w-]+)", r"\2", message))


class ArgumentParser(OneLineErrors, argparse.ArgumentParser):
    pass


def build_parser(command: str) -> argparse.ArgumentParser:
    """``sft``, ``ppo`` or ``eval``'s parser; given options only (defaults are merged by :func:`parse`)."""
    from transformers import HfArgumentParser

    views, _, _ = _options(command)
    what = {"sft": "LoRA SFT (TRL's SFTTrainer), as notebook 03", "ppo": "PPO with LoRA and the rule-based reward, as notebook 04",
            "eval": "evaluate a model on a task, as notebook 02"}[command]
    parser = type("Parser", (OneLineErrors, HfArgumentParser), {})(
        views, prog=f"{PROG} {command}", usage="%(prog)s [--config FILE] [--OPTION VALUE ...]", allow_abbrev=False,
        formatter_class=argparse.HelpFormatter,
        description=f"{what}; alone or under `accelerate launch -m nlu_helpers {command}`. Lists and pairs are YAML: '[12, 31]'.",
    )
    return parser


def _refuse_renamed(names: Sequence[str], known: Iterable[str], where: str = "") -> None:
    """A one-line error for an old name (``--grad-accum``) whose new name this command has."""
    for name in names:
        key = name.lstrip("-").split("=", 1)[0].replace("-", "_")
        if key in RENAMED and RENAMED[key][0] in known:
            new, note = RENAMED[key]
            shown = (f"--{key.replace('_', '-')}", f"--{new.replace('_', '-')}") if not where else (repr(key), repr(new))
            raise UsageError(f"{where}{shown[0]} was renamed: use {shown[1]}{f' ({note})' if note else ''}")


def suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=2, cutoff=0.7)
    return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""


def parse(command: str, argv: Sequence[str]) -> dict[str, Any]:
    """Every parameter of ``sft``, ``ppo`` or ``eval``: defaults, then ``--config``, then the command line.
    ``_given`` lists what was asked for, so the preset supplies the rest."""
    argv = list(argv)
    _, _, defaults = _options(command)
    _refuse_renamed([a for a in argv if a.startswith("--")], defaults)
    parser = build_parser(command)
    namespace, extra = parser.parse_known_args(argv)
    if extra:
        option = next((a for a in extra if a.startswith("-")), extra[0])
        flags = [s for action in parser._actions for s in action.option_strings if "_" not in s]
        raise UsageError(f"unknown option {option!r}{suggest(option.split('=')[0], flags)} (see --help)")
    given = vars(namespace)
    source = given.pop("config", None)
    from_file = read_config(source, command) if source else {}
    values = {**defaults, **from_file, **given}
    values.pop("config", None)
    values["_given"] = sorted(set(from_file) | set(given))
    return values


def read_config(source: str | os.PathLike, command: str) -> dict[str, Any]:
    """Parameters from a YAML file (a flat mapping of option names) or a workbook profile
    (``parameters`` + ``notebooks``; a shipped one by name). A profile's notebook-only parameters
    (``eval_limit``, ``n_bootstrap``, ...) are left out; a flat file naming an unknown one is an error."""
    from nlu_helpers import runner

    name = str(source)
    path = Path(source).expanduser()
    if path.is_file():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise UsageError(f"config {name!r} is not valid YAML: {one_line(error)}") from None
    elif name in runner.profiles():
        loaded = runner.load_profile(name)
    else:
        raise UsageError(f"config {name!r} is neither a YAML file nor a shipped profile{suggest(name, runner.profiles())}; "
                         f"profiles: {', '.join(runner.profiles())}")
    if not isinstance(loaded, Mapping):
        raise UsageError(f"config {name!r} must hold a mapping of parameters, got {type(loaded).__name__}")
    _, converters, _ = _options(command)
    known = set(converters) - {"config"}
    if "parameters" in loaded or "notebooks" in loaded:  # a profile: keep what this command knows
        merged = {**(loaded.get("parameters") or {}), **((loaded.get("notebooks") or {}).get(NOTEBOOK_OF[command]) or {})}
        # notebook names that differ from ours (overwrite, target_modules, k); "resume" would mean the opposite of restart
        renamed = {old: new for old, (new, _) in RENAMED.items() if old != "resume"}
        merged = {renamed.get(k, k): v for k, v in ((str(k).replace("-", "_"), v) for k, v in merged.items())}
        values = {k: v for k, v in merged.items() if k in known - PROFILE_SKIPS[command]}
    else:
        values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
        _refuse_renamed(list(values), known, where=f"config {name!r}: ")
        for key in values:
            if key not in known:
                raise UsageError(f"config {name!r}: unknown parameter {key!r}{suggest(key, sorted(known))}")
    checked = {}
    for key, value in values.items():
        try:
            checked[key] = converters[key](value)
        except argparse.ArgumentTypeError as error:
            raise UsageError(f"config {name!r}: {key}: {error}") from None
    return checked


# --------------------------------------------------------------------------- settings from values


def one_line(error: BaseException | str) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())


@contextmanager
def bad_input() -> Iterator[None]:
    """Errors of the checks are bad input: a :class:`UsageError`."""
    try:
        yield
    except UsageError:
        raise
    except (ValueError, KeyError, TypeError, OSError, RuntimeError) as error:
        raise UsageError(one_line(error)) from error


def split_values(values: Mapping[str, Any], settings_class: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings fields that were given, everything else)."""
    names = {f.name for f in dataclasses.fields(settings_class)}
    given = set(values.get("_given", ()))
    return ({k: v for k, v in values.items() if k in names and k in given},
            {k: v for k, v in values.items() if k not in names and k != "_given"})


def sft_settings(values: Mapping[str, Any]) -> "SFTSettings":
    """The preset's ``SFTSettings`` with the given fields changed."""
    from nlu_helpers import sft

    fields_, rest = split_values(values, sft.SFTSettings)
    preset = str(rest["preset"]).strip().lower().replace("_", "-")
    bases = {"cpu-demo": sft.CPU_DEMO, "paper": sft.PAPER}
    if preset not in bases:
        raise UsageError(f"unknown SFT preset {rest['preset']!r}; allowed: {', '.join(SFT_PRESETS)}")
    with bad_input():
        return bases[preset].replace(**fields_)


def ppo_config(values: Mapping[str, Any]) -> "PPOConfig":
    """The preset's ``PPOConfig`` with the given fields changed (null learning rate or temperature: the preset's)."""
    from nlu_helpers import ppo, rewards

    fields_, rest = split_values(values, ppo.PPOConfig)
    fields_ = {k: v for k, v in fields_.items() if not (v is None and k in PRESET_WHEN_NULL)}
    tokens = fields_.get("max_new_tokens")
    if isinstance(tokens, int) and not isinstance(tokens, bool):
        fields_["max_new_tokens"] = (tokens, tokens)  # one length: low = high
    with bad_input():
        if isinstance(fields_.get("reward"), Mapping):
            fields_["reward"] = rewards.RewardConfig(**fields_["reward"])
        for name in ("max_new_tokens", "lora_target_modules"):
            if isinstance(fields_.get(name), list):
                fields_[name] = tuple(fields_[name])
        return ppo.preset(rest["preset"], **fields_)


