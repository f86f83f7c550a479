"""Real model architectures without the hub: parameter counts, memory estimates, random-weight builds.

Speed and memory do not depend on the weights' values, so benchmarks build the real
configurations with random weights, and notebooks check *before* training whether a
model, LoRA rank, batch and sequence length fit the GPU they found.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Mapping

GIB = 2**30

# Public configurations (the models' config.json files), kept here so no hub is needed.
ARCHITECTURES: dict[str, dict] = {
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                         max_position_embeddings=8192, rope_theta=100000.0, attention_bias=False),
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         max_position_embeddings=32768, rope_theta=1000000.0, attention_bias=True),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         max_position_embeddings=32768, rope_theta=1000000.0, attention_bias=True),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                       max_position_embeddings=32768, rope_theta=1000000.0, attention_bias=True),
    "llama-2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False,
                       max_position_embeddings=4096, rope_theta=10000.0, attention_bias=False),
}
# Hub ids people pass, mapped to the architecture they use.
HUB_IDS = {
    "huggingfacetb/smollm2-135m-instruct": "smollm2-135m",
    "qwen/qwen2.5-0.5b-instruct": "qwen2.5-0.5b",
    "qwen/qwen2.5-1.5b-instruct": "qwen2.5-1.5b",
    "qwen/qwen2.5-7b-instruct": "qwen2.5-7b",
    "meta-llama/llama-2-7b-chat-hf": "llama-2-7b",
    "meta-llama/llama-2-7b-hf": "llama-2-7b",
}
BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "4bit": 0.5}


def architecture(name: str) -> dict:
    """A known architecture's config values, by short name or hub id ("embedded" = SmolLM2-135M)."""
    key = name.strip().lower()
    key = {"embedded": "smollm2-135m"}.get(key, HUB_IDS.get(key, key))
    if key not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)} (or their hub ids)")
    return dict(ARCHITECTURES[key])


def config_for(name: str):
    """A transformers config object of a known architecture."""
    from transformers import AutoConfig

    values = architecture(name)
    model_type = values.pop("model_type")
    rope_theta = values.pop("rope_theta")
    attention_bias = values.pop("attention_bias")
    config = AutoConfig.for_model(model_type, **values)
    config.rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    if model_type == "llama":
        config.attention_bias = attention_bias
    return config


def random_model(name: str, *, dtype=None, device: str | None = None):
    """The architecture with random weights (for speed and memory figures only)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = config_for(name)
    with torch.device(device or "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    return model.eval()


def _shape(values: Mapping) -> tuple[int, int, int, int, int, int]:
    h, i, layers = values["hidden_size"], values["intermediate_size"], values["num_hidden_layers"]
    heads, kv_heads, vocab = values["num_attention_heads"], values["num_key_value_heads"], values["vocab_size"]
    return h, i, layers, heads, kv_heads, vocab


def parameter_count(name_or_values: str | Mapping) -> dict[str, int]:
    """Parameters by part (embedding, blocks, LM head) and in total, computed from the config."""
    values = architecture(name_or_values) if isinstance(name_or_values, str) else dict(name_or_values)
    h, i, layers, heads, kv_heads, vocab = _shape(values)
    kv_dim = kv_heads * (h // heads)
    bias = values.get("attention_bias", False)
    attention = 2 * h * h + 2 * h * kv_dim + ((h + 2 * kv_dim) if bias else 0)
    per_layer = attention + 3 * h * i + 2 * h  # + two RMSNorm weights
    counts = {
        "embedding": vocab * h,
        "blocks": per_layer * layers + h,  # + final norm
        "lm_head": 0 if values.get("tie_word_embeddings") else vocab * h,
    }
    counts["total"] = sum(counts.values())
    return counts


def lora_parameter_count(name: str, r: int = 16, target_modules=("q_proj", "v_proj")) -> int:
    values = architecture(name)
    h, i, layers, heads, kv_heads, _ = _shape(values)
    kv_dim = kv_heads * (h // heads)
    shapes = {"q_proj": (h, h), "k_proj": (h, kv_dim), "v_proj": (h, kv_dim), "o_proj": (h, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    if target_modules == "all-linear":
        target_modules = tuple(shapes)
    unknown = set(target_modules) - set(shapes)
    if unknown:
        raise ValueError(f"unknown target modules {sorted(unknown)}; allowed: {', '.join(shapes)} or 'all-linear'")
    return layers * sum(r * (shapes[m][0] + shapes[m][1]) for m in target_modules)


@dataclass
class MemoryEstimate:
    """GiB by part for one training step (SFT or PPO's update) plus generation's KV cache."""

    weights: float
    lora_and_optimizer: float
    activations: float
    logits: float
    kv_cache: float
    total: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in asdict(self).items()}


def estimate_memory(
    name: str,
    *,
    batch_size: int,
    seq_len: int,
    dtype: str = "bf16",
    load_in_4bit: bool = False,
    lora_r: int = 16,
    target_modules=("q_proj", "v_proj"),
    gradient_checkpointing: bool = False,
    generation_tokens: int = 0,
) -> MemoryEstimate:
    """A conservative estimate of peak memory for LoRA training (and generation) of a known architecture.

    Weights: parameters x bytes (4-bit quantises the blocks; embeddings and head stay in
    ``dtype``). LoRA: fp32 weights, gradients and two Adam moments (16 bytes per parameter).
    Activations: 34 bytes x tokens x hidden per layer for 16-bit training without attention
    scores stored (Korthikanti et al., 2022, with SDPA/flash attention); with gradient
    checkpointing only each layer's input (2 bytes x tokens x hidden) plus one layer's
    full activations. Logits: fp32 logits and their gradient over the vocabulary. KV cache:
    2 x layers x tokens x kv-heads x head-dim in ``dtype``.
    """
    if dtype not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"dtype {dtype!r} is not known; allowed: fp32, bf16, fp16")
    values = architecture(name)
    h, _, layers, heads, kv_heads, vocab = _shape(values)
    counts = parameter_count(values)
    width = BYTES[dtype]
    block_bytes = BYTES["4bit"] * 1.06 if load_in_4bit else width  # nf4 + its scales
    weights = counts["blocks"] * block_bytes + (counts["embedding"] + counts["lm_head"]) * width
    lora = lora_parameter_count(name, lora_r, target_modules) * 16.0
    tokens = batch_size * seq_len
    scale = width / 2.0  # the 34-byte figure is for 16-bit activations
    if gradient_checkpointing:
        activations = (2.0 * tokens * h * layers + 34.0 * tokens * h) * scale
    else:
        activations = 34.0 * tokens * h * layers * scale
    logits = 2 * tokens * vocab * 4.0
    kv = 2 * layers * batch_size * (seq_len + generation_tokens) * kv_heads * (h // heads) * width if generation_tokens else 0.0
    parts = [weights / GIB, lora / GIB, activations / GIB, logits / GIB, kv / GIB]
    return MemoryEstimate(*parts, total=sum(parts))


def check_fits(estimate: MemoryEstimate, hardware: Mapping, *, headroom: float = 0.9) -> None:
    """Raise a clear error when the estimate exceeds the device's memory (CPU: no check)."""
    if not hardware.get("cuda"):
        return
    available = float(hardware["memory_gib"]) * headroom
    if estimate.total > available:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in estimate.as_dict().items() if k != "total")
        raise MemoryError(
            f"estimated {estimate.total:.1f} GiB ({parts}) does not fit in {hardware.get('name', 'the GPU')}'s "
            f"{hardware['memory_gib']:.0f} GiB (using {headroom:.0%} of it): lower the batch size or sequence length, "
            "turn on gradient checkpointing, or load the model in 4-bit"
        )


def suggest_profile(hardware: Mapping) -> str:
    """The profile that fits what was found: CPU -> cpu-demo, a 16 GB-class GPU -> colab-t4, 40 GB+ with bf16 -> paper."""
    if not hardware.get("cuda"):
        return "cpu-demo"
    memory = float(hardware.get("memory_gib") or 0)
    if memory >= 40 and hardware.get("bf16"):
        return "paper"
    return "colab-t4"


# What each suggested profile means, in a line (the profiles themselves: nlu_helpers/profiles/*.yaml).
PROFILE_SUMMARIES = {
    "cpu-demo": "the embedded SmolLM2-135M on the CPU, offline",
    "colab-t4": "a small instruct model (Qwen2.5-0.5B) in 4-bit, sized for a 16 GB T4",
    "paper": "a 7B model in bf16 with the paper's settings (40 GB+ GPU with bf16)",
}


def _describe(hardware: Mapping) -> str:
    memory = hardware.get("memory_gib")
    size = f"{memory:.1f} GiB" if memory else "unknown memory"
    kind = "GPU" if hardware.get("cuda") else "system memory"
    bf16 = ", bf16" if hardware.get("bf16") else (", no native bf16 (fp16 instead)" if hardware.get("cuda") else "")
    return f"{hardware.get('name', 'unknown device')}: {size} {kind}{bf16}"


def preflight(
    model: str,
    *,
    batch_size: int,
    seq_len: int,
    lora_r: int = 16,
    target_modules=None,
    load_in_4bit: bool = False,
    gradient_checkpointing: bool = False,
    generation_tokens: int = 0,
    hardware: Mapping | None = None,
    headroom: float = 0.9,
) -> dict:
    """Before training: print the hardware, the profile that suits it and a memory estimate for this
    model, LoRA rank, batch and sequence length; raise ``MemoryError`` when it will not fit.

    Why: an out-of-memory crash comes minutes into training (after loading a 7B model), with a
    CUDA message that names no setting. Here the numbers and the remedies come first. Only a
    CUDA GPU is checked; on the CPU, or for an architecture this module does not know (see
    :data:`ARCHITECTURES`; ``"tiny-random"`` and local folders are unknown), it only reports.
    ``target_modules=None`` means PEFT's default for these architectures (q_proj, v_proj).
    Returns what it found: ``hardware``, ``suggested_profile``, ``estimate`` (GiB by part or
    None) and ``fits`` (True, or None when nothing was checked).
    """
    from nlu_helpers import models

    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("lora_r", lora_r)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    hardware = dict(hardware) if hardware is not None else models.describe_hardware()
    suggestion = suggest_profile(hardware)
    report: dict = {"hardware": hardware, "suggested_profile": suggestion, "estimate": None, "fits": None}
    print(f"hardware: {_describe(hardware)}")
    print(f"suggested profile: {suggestion} ({PROFILE_SUMMARIES.get(suggestion, '')})")
    try:
        architecture(str(model))
    except KeyError:
        print(f"memory estimate: none for {str(model)!r}, an architecture this check does not know "
              f"(known: {', '.join(ARCHITECTURES)} and their hub ids); not checked")
        return report
    cuda = bool(hardware.get("cuda"))
    dtype = ("bf16" if hardware.get("bf16") else "fp16") if cuda else "fp32"
    estimate = estimate_memory(
        str(model), batch_size=batch_size, seq_len=seq_len, dtype=dtype, load_in_4bit=load_in_4bit, lora_r=lora_r,
        target_modules=target_modules if target_modules is not None else ("q_proj", "v_proj"),
        gradient_checkpointing=gradient_checkpointing, generation_tokens=generation_tokens,
    )
    report["estimate"] = estimate.as_dict()
    parts = ", ".join(f"{k} {v:.2f}" for k, v in estimate.as_dict().items() if k != "total")
    setup = f"{dtype}{' + 4-bit blocks' if load_in_4bit else ''}, batch {batch_size} x {seq_len} tokens, LoRA r={lora_r}"
    print(f"memory estimate ({setup}): {estimate.total:.2f} GiB ({parts})")
    if not cuda or not hardware.get("memory_gib"):
        print("fits: not checked (no CUDA GPU)")
        return report
    try:
        check_fits(estimate, hardware, headroom=headroom)
    except MemoryError as error:
        raise MemoryError(
            f"{error}. Asked for: model {str(model)!r}, batch_size={batch_size}, seq_len={seq_len}, lora_r={lora_r}, "
            f"load_in_4bit={load_in_4bit}, gradient_checkpointing={gradient_checkpointing}; the profile suggested "
            f"for this GPU is {suggestion!r} ({PROFILE_SUMMARIES.get(suggestion, '')})"
        ) from None
    report["fits"] = True
    print(f"fits: yes, {estimate.total:.1f} of {hardware['memory_gib']:.1f} GiB (using up to {headroom:.0%})")
    return report


def preflight_profile(profile: str, hardware: Mapping, *, headroom: float = 0.9,
                      changes: Mapping[str, Mapping] | None = None) -> dict[str, dict]:
    """The memory a profile's training needs on ``hardware``: notebook 03's SFT step and notebook 04's PPO
    (the larger of its update mini-batch and its rollout's cache), with the profile's own settings.

    Why: a profile is a promise that its notebooks fit the GPU it names (``colab-t4``: a 15 GB T4). This
    checks that promise before anyone rents the GPU, and the runner checks it before a run on a CUDA GPU.
    Rows are at most notebook 03's ``max_length`` tokens (SFT refuses longer ones; PPO's prompts are the
    same rows). ``changes`` replaces settings per notebook: 03's settings, 04's PPOConfig fields
    (``{"03_lora_sft": {"batch_size": 32}, "04_ppo": {"prompts_per_step": 64}}``).
    Returns each notebook's estimate (GiB by part) and whether it fits; raises ``MemoryError`` naming the
    notebook and setting when one does not.
    """
    from nlu_helpers import ppo, runner
    from nlu_helpers.stages import notebook_settings

    content = runner.load_profile(profile)
    model = str(content["parameters"].get("model", ""))
    architecture(model)  # KeyError for an architecture this module does not know
    dtype = ("bf16" if hardware.get("bf16") else "fp16") if hardware.get("cuda") else "fp32"
    sft = vars(notebook_settings(profile, "03_lora_sft")) | dict((changes or {}).get("03_lora_sft", {}))
    preset = (content["notebooks"].get("04_ppo") or {}).get("preset", "paper")
    config = ppo.preset(preset, **dict((changes or {}).get("04_ppo", {})))  # PPOConfig fields
    length, targets = int(sft["max_length"]), sft["lora_target_modules"] or ("q_proj", "v_proj")
    estimates = {
        "03_lora_sft": estimate_memory(model, batch_size=int(sft["batch_size"]), seq_len=length, dtype=dtype,
                                       load_in_4bit=bool(sft["load_in_4bit"]), target_modules=targets,
                                       gradient_checkpointing=bool(sft["gradient_checkpointing"])),
        "04_ppo": estimate_memory(model, batch_size=config.batch_size, seq_len=length + config.max_new_tokens[1], dtype=dtype,
                                  load_in_4bit=config.load_in_4bit, lora_r=config.lora_r),
    }
    rollout = estimate_memory(model, batch_size=config.prompts_per_step, seq_len=length, dtype=dtype, load_in_4bit=config.load_in_4bit,
                              lora_r=config.lora_r, generation_tokens=config.max_new_tokens[1])
    held = rollout.weights + rollout.lora_and_optimizer + rollout.kv_cache  # generation keeps no activations or logits
    if held > estimates["04_ppo"].total:
        estimates["04_ppo"] = replace(rollout, activations=0.0, logits=0.0, total=held)
    report = {}
    for notebook, estimate in estimates.items():
        try:
            check_fits(estimate, hardware, headroom=headroom)
        except MemoryError as error:
            shown = {k: sft[k] for k in ("batch_size", "max_length", "load_in_4bit", "gradient_checkpointing")} if notebook == "03_lora_sft" \
                else {"batch_size": config.batch_size, "prompts_per_step": config.prompts_per_step, "max_length (03)": length}
            raise MemoryError(f"profile {profile!r}, notebook {notebook} with {shown}: {error}") from None
        report[notebook] = {"estimate": estimate.as_dict(), "fits": bool(hardware.get("cuda")) or None}
    return report
