"""On a CUDA GPU: half precision, fp16 loss scaling as a T4 runs it, 4-bit QLoRA, and the memory preflight.

Everything else in the suite runs on CPU stand-ins; these tests are the ones that need the
real thing. They carry the ``cuda`` mark and are skipped without a GPU (so CI, which has
none, reports them as skips). On a GPU machine: ``pytest -m cuda tests/test_cuda.py``, or
``make gpu-check``, which also runs the benchmarks (``scripts/gpu_check.py``).

``NLU_GPU_CHECK_ON_CPU=1`` (set by ``scripts/gpu_check.py --dry-run``) runs the tests that
mean something on a CPU too, on the CPU (bf16/fp16 there are torch's CPU kernels), so a
broken test is found before a GPU lease is spent on it; the CUDA-only ones stay skipped.
Figures worth keeping (losses, errors, estimated and measured memory) are recorded with
``record_property``: they land in the JUnit XML that the GPU check reads.
"""

from __future__ import annotations

import gc
import dataclasses
import math
import os

import pytest
import torch

from nlu_helpers import architectures, data, evaluation, models, ppo, sft
from nlu_helpers.tasks import get_task

CUDA = torch.cuda.is_available()
ON_CPU = os.environ.get("NLU_GPU_CHECK_ON_CPU") == "1"
DEVICE = "cuda" if CUDA else "cpu"
TASK = "movie-snippets"
TINY = models.TINY_MODEL
GIB = 2**30

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (CUDA or ON_CPU), reason="needs a CUDA GPU (pytest -m cuda there, or make gpu-check); "
                                                    "NLU_GPU_CHECK_ON_CPU=1 runs the CPU-capable ones on the CPU"),
    pytest.mark.usefixtures("one_thread"),  # the CPU run: the tiny model's kernels gain nothing from threads
]
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA only (loss scaling, bitsandbytes, the CUDA allocator)")

# Half-precision rounding of the tiny model's last-position logits (std about 0.16, top-1 margins
# about 0.5): the CPU shows 0.006 (bf16) and 0.0006 (fp16); a tenth of the margin still cannot flip an answer.
LOGIT_TOLERANCE = {"bf16": 0.05, "fp16": 0.01}
# A fresh LoRA and value head on the tiny model; lr large enough that a few steps move them visibly.
PPO_CONFIG = ppo.preset("smoke", prompts_per_step=8, batch_size=4, gradient_accumulation_steps=1, ppo_epochs=4,
                        learning_rate=1e-2, max_new_tokens=(4, 6))
SFT_SETTINGS = sft.SFTSettings(learning_rate=1e-2, batch_size=4, max_steps=6, max_length=256, save_steps=1000,
                               lora_dropout=0.0, lr_scheduler="constant", device=DEVICE)


@pytest.fixture(scope="module")
def rows():
    return list(data.load_split(TASK, "train", limit=32))


@pytest.fixture(scope="module")
def eval_rows():
    return list(data.load_split(TASK, "validation", limit=16))


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer(TINY)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; a test that asks for another precision starts and ends clean."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _no_native_bf16(precision: str) -> bool:
    return precision == "bf16" and CUDA and not torch.cuda.is_bf16_supported(including_emulation=False)


def _like_a_t4(monkeypatch) -> None:
    """torch.cuda as a T4 answers: bf16 only through emulation (models.pick_dtype then picks fp16)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bool(including_emulation))


def _examples(tokenizer, rows):
    return [{**e, "completion": e["completion"] + tokenizer.eos_token} for e in sft.sft_examples(TASK, rows)]


def _lora(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().clone() for n, p in module.named_parameters() if "lora_" in n}


def _four_bit_layers(module: torch.nn.Module) -> int:
    import bitsandbytes as bnb

    return sum(isinstance(m, bnb.nn.Linear4bit) for m in module.modules())


def _bitsandbytes() -> None:
    """On a GPU a missing bitsandbytes is a setup error, not a reason to skip: the 4-bit path would go untested."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        pytest.fail(f"bitsandbytes is not importable ({error}); install it (pip install bitsandbytes, or the "
                    "wheels scripts/gpu_wheels.py fetches) to test 4-bit QLoRA")


def _train_sft(settings: sft.SFTSettings, tokenizer, rows, tmp_path):
    trainer = sft.make_trainer(settings, model=TINY, examples=_examples(tokenizer, rows), output_dir=tmp_path,
                               tokenizer=tokenizer, progress=False)
    before = _lora(trainer.model)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    after = _lora(trainer.model)
    moved = max(float((after[n] - before[n]).abs().max()) for n in before)
    return trainer, losses, moved


def _ppo_steps(trainer: ppo.PPOTrainer, steps: int) -> list[dict]:
    return [trainer.step() for _ in range(steps)]


def _check_ppo_history(history: list[dict], record_property) -> None:
    for key in ("policy_loss", "value_loss", "kl", "grad_norm"):
        values = [row[key] for row in history]
        record_property(key, values)
        assert all(math.isfinite(v) for v in values), f"{key} not finite: {values}"
    value_losses = [row["value_loss"] for row in history]
    # the value head starts at 0 and the returns sit near the (constant) reward: its loss must fall
    assert value_losses[-1] < 0.5 * value_losses[0], f"value loss did not fall: {value_losses}"
    # the logged gradient norm is the real one, not the loss-scaled one (65536x under a fresh GradScaler)
    assert max(row["grad_norm"] for row in history) < 1e3, [row["grad_norm"] for row in history]


# ---------------------------------------------------------------------------------------
# Greedy answers in half precision
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_greedy_answers_in_half_precision_agree_with_fp32(precision, tokenizer, eval_rows, record_property):
    if _no_native_bf16(precision):
        pytest.skip("this GPU has no native bf16")
    reference = models.load_model(TINY, device=DEVICE, dtype="fp32")
    half = models.load_model(TINY, device=DEVICE, dtype=precision)
    assert next(half.parameters()).dtype == models.pick_dtype(precision)
    options = {"mode": "generate", "batch_size": 8, "max_new_tokens": 8, "n_bootstrap": 0, "progress": False}
    want = evaluation.evaluate(reference, tokenizer, TASK, eval_rows, **options)
    got = evaluation.evaluate(half, tokenizer, TASK, eval_rows, **options)
    assert [p["text"] for p in got.predictions] == [p["text"] for p in want.predictions]

    # the logits the answers rest on: rounding far below the top-1 margins
    prompts = [get_task(TASK).build_prompt(row) for row in eval_rows]
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(DEVICE)
    with torch.no_grad():
        exact = reference(**batch).logits[:, -1].float()  # [B, V]
        rounded = half(**batch).logits[:, -1].float()  # [B, V]
    error = float((exact - rounded).abs().max())
    top = exact.topk(2, dim=-1).values  # [B, 2]
    margin = float((top[:, 0] - top[:, 1]).min())
    record_property("max_logit_error", error)
    record_property("min_top1_margin", margin)
    assert error < LOGIT_TOLERANCE[precision], f"{precision} logits off by {error:.4f} (top-1 margins >= {margin:.3f})"


# ---------------------------------------------------------------------------------------
# SFT and PPO steps: bf16, and fp16 with loss scaling
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["bf16", pytest.param("fp16", marks=needs_cuda)])
def test_sft_steps_give_finite_falling_losses(precision, tokenizer, rows, tmp_path, record_property):
    if _no_native_bf16(precision):
        pytest.skip("this GPU has no native bf16")
    trainer, losses, moved = _train_sft(SFT_SETTINGS.replace(precision=precision), tokenizer, rows[:8], tmp_path)
    record_property("losses", losses)
    assert len(losses) == SFT_SETTINGS.max_steps and all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0] - 0.1, f"SFT loss did not fall: {losses}"
    assert moved > 0
    frozen = {p.dtype for p in trainer.model.parameters() if not p.requires_grad and p.is_floating_point()}
    assert frozen == {models.pick_dtype(precision)}
    # trainable weights (the LoRA) in fp32: the optimizer's master copy, what a GradScaler can unscale
    assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {torch.float32}
    if precision == "fp16":
        assert trainer.accelerator.scaler is not None, "fp16 training without a GradScaler: gradients underflow"


def test_ppo_steps_in_bf16_give_finite_losses_and_a_falling_value_loss(rows, fresh_accelerate_state, record_property):
    if _no_native_bf16("bf16"):
        pytest.skip("this GPU has no native bf16")
    trainer = ppo.PPOTrainer(TINY, TASK, rows, PPO_CONFIG, device=DEVICE, dtype="bf16")
    assert {p.dtype for p in trainer.policy.get_base_model().parameters() if not p.requires_grad} == {torch.bfloat16}
    history = _ppo_steps(trainer, 6)
    _check_ppo_history(history, record_property)
    assert sum(row["skipped_updates"] for row in history) == 0


@needs_cuda
def test_ppo_steps_in_fp16_with_loss_scaling(rows, fresh_accelerate_state, record_property):
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision="fp16")  # a GradScaler scales the loss, unscales before the step
    trainer = ppo.PPOTrainer(TINY, TASK, rows, PPO_CONFIG, device="cuda", dtype="fp16", accelerator=accelerator)
    assert accelerator.scaler is not None
    assert {p.dtype for p in trainer.policy.get_base_model().parameters() if not p.requires_grad} == {torch.float16}
    assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {torch.float32}
    history = _ppo_steps(trainer, 6)
    _check_ppo_history(history, record_property)
    record_property("loss_scale", float(accelerator.scaler.get_scale()))
    record_property("skipped_updates", [row["skipped_updates"] for row in history])
    # a few steps may be skipped while the scale settles; a run of them means the scale never recovers
    assert sum(row["skipped_updates"] for row in history) <= 2


@needs_cuda
def test_on_a_gpu_without_bf16_training_runs_in_fp16_with_loss_scaling(tokenizer, rows, tmp_path, monkeypatch,
                                                                     fresh_accelerate_state, record_property):
    """The T4 path as the workbook takes it by default (precision/dtype "auto"), with no setting changed."""
    _like_a_t4(monkeypatch)
    assert models.pick_dtype("auto", "cuda") == torch.float16
    trainer, losses, _ = _train_sft(SFT_SETTINGS, tokenizer, rows[:8], tmp_path)  # precision "auto"
    record_property("sft_losses", losses)
    assert trainer.accelerator.scaler is not None and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    ppo_trainer = ppo.PPOTrainer(TINY, TASK, rows, PPO_CONFIG, device="cuda")  # dtype "auto", its own accelerator
    assert next(ppo_trainer.policy.get_base_model().parameters()).dtype == torch.float16
    assert ppo_trainer.accelerator.scaler is not None, (
        "PPO on a GPU without bf16 trains fp16 weights with no loss scaling: its accelerator needs mixed_precision='fp16'")
    _check_ppo_history(_ppo_steps(ppo_trainer, 6), record_property)


# ---------------------------------------------------------------------------------------
# 4-bit QLoRA
# ---------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_4bit_lora_sft_step(precision, tokenizer, rows, tmp_path, record_property):
    _bitsandbytes()
    if _no_native_bf16(precision):
        pytest.skip("this GPU has no native bf16")
    settings = SFT_SETTINGS.replace(load_in_4bit=True, precision=precision, max_steps=2)
    trainer, losses, moved = _train_sft(settings, tokenizer, rows[:8], tmp_path)
    record_property("losses", losses)
    assert _four_bit_layers(trainer.model) > 0
    assert trainer.model.get_base_model().config.quantization_config.bnb_4bit_compute_dtype == models.pick_dtype(precision)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses) and moved > 0


@needs_cuda
def test_4bit_lora_ppo_step(rows, fresh_accelerate_state, record_property):
    _bitsandbytes()
    trainer = ppo.PPOTrainer(TINY, TASK, rows, dataclasses.replace(PPO_CONFIG, load_in_4bit=True), device="cuda")
    assert _four_bit_layers(trainer.policy) > 0
    before = _lora(trainer.policy)
    row = trainer.step()
    after = _lora(trainer.policy)
    for key in ("policy_loss", "value_loss", "kl"):
        record_property(key, row[key])
        assert math.isfinite(row[key]), (key, row[key])
    assert row["skipped_updates"] == 0
    assert max(float((after[n] - before[n]).abs().max()) for n in before) > 0


# ---------------------------------------------------------------------------------------
# The memory preflight against the CUDA allocator
# ---------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("name", ["qwen2.5-0.5b", "qwen2.5-7b"])
def test_memory_estimate_is_within_25_percent_of_the_measured_peak(name, record_property):
    """One LoRA training step (forward, backward, AdamW) of a random-weight architecture, as the estimate models it."""
    batch, seq_len = 8, 256
    report = architectures.preflight(name, batch_size=batch, seq_len=seq_len)
    estimate = report["estimate"]["total"]
    dtype = torch.bfloat16 if report["hardware"]["bf16"] else torch.float16
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    model = architectures.random_model(name, dtype=dtype, device="cuda")
    model = models.add_lora(model, models.lora_config())  # q_proj, v_proj: what the estimate assumes
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), device="cuda", generator=generator)  # [B, T]
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - start) / GIB
    del model, optimizer, loss, ids
    gc.collect()
    torch.cuda.empty_cache()
    record_property("estimate_gib", estimate)
    record_property("estimate_parts", report["estimate"])
    record_property("measured_peak_gib", round(peak, 3))
    record_property("ratio", round(estimate / peak, 3))
    assert math.isfinite(peak) and peak > 0
    assert abs(estimate - peak) <= 0.25 * peak, f"{name}: estimate {estimate:.2f} GiB vs measured {peak:.2f} GiB"
