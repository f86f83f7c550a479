"""GPU detection and the memory check run before training: parameter counts against the published
model sizes, memory estimates against known figures, and the fits/does-not-fit decision on a
T4 and an H100 (faked by patching ``torch.cuda``; these tests need no GPU)."""

from types import SimpleNamespace

import pytest
import torch

from nlu_helpers import architectures, models

GIB = 2**30
# Published sizes (the models' safetensors parameter counts on the hub)
PUBLISHED = {
    "llama-2-7b": 6_738_415_616,
    "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-0.5b": 494_032_768,
    "smollm2-135m": 134_515_008,
}
T4 = {"cuda": True, "name": "Tesla T4", "memory_gib": 15.0, "bf16": False}  # Colab's T4 shows 15 GiB
H100 = {"cuda": True, "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.2, "bf16": True}
CPU = {"cuda": False, "name": "CPU (x86_64, 2 cores)", "memory_gib": 23.5, "bf16": False}


def _fake_gpu(monkeypatch, name: str, memory_gib: float, native_bf16: bool, count: int = 1) -> None:
    """torch.cuda as a machine with that GPU would answer (bf16 is always "supported" with emulation)."""
    props = SimpleNamespace(name=name, total_memory=int(memory_gib * GIB))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=0: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native_bf16)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_are_the_published_sizes_and_the_built_models(name):
    assert architectures.parameter_count(name)["total"] == PUBLISHED[name]
    built = architectures.random_model(name, device="meta")  # the real architecture, no memory
    assert built.num_parameters() == PUBLISHED[name]


def test_hub_ids_and_embedded_name_map_to_their_architectures():
    assert architectures.architecture("meta-llama/Llama-2-7b-chat-hf") == architectures.architecture("llama-2-7b")
    assert architectures.architecture("Qwen/Qwen2.5-0.5B-Instruct")["hidden_size"] == 896
    assert architectures.parameter_count("embedded")["total"] == PUBLISHED["smollm2-135m"]
    with pytest.raises(KeyError, match="unknown architecture 'gpt-5'.*llama-2-7b"):
        architectures.architecture("gpt-5")


def test_memory_estimate_against_known_figures():
    bf16 = architectures.estimate_memory("llama-2-7b", batch_size=1, seq_len=512, dtype="bf16")
    assert bf16.weights == pytest.approx(PUBLISHED["llama-2-7b"] * 2 / GIB, rel=1e-9)  # 2 bytes per weight
    assert bf16.weights == pytest.approx(12.55, abs=0.01)
    four_bit = architectures.estimate_memory("llama-2-7b", batch_size=1, seq_len=512, dtype="fp16", load_in_4bit=True)
    assert 3.3 < four_bit.weights < 4.0  # ~0.53 bytes per block weight, embeddings and head in fp16
    # LoRA r=16 on q and v of Llama-2-7B: 32 layers x 2 x 16 x (4096 + 4096) = 8.4M parameters, 16 bytes each
    assert architectures.lora_parameter_count("llama-2-7b", 16) == 8_388_608
    assert bf16.lora_and_optimizer == pytest.approx(8_388_608 * 16 / GIB)
    # activations grow with batch x length; gradient checkpointing cuts them
    bigger = architectures.estimate_memory("llama-2-7b", batch_size=4, seq_len=512)
    assert bigger.activations == pytest.approx(4 * bf16.activations)
    assert architectures.estimate_memory("llama-2-7b", batch_size=4, seq_len=512, gradient_checkpointing=True).activations < bigger.activations / 4
    assert bf16.total == pytest.approx(sum(v for k, v in bf16.as_dict().items() if k != "total"), abs=0.05)


def test_a_t4_fits_7b_in_4bit_at_a_small_batch_but_not_in_16_bit(capsys):
    fits = architectures.preflight("meta-llama/Llama-2-7b-chat-hf", batch_size=1, seq_len=512, load_in_4bit=True, hardware=T4)
    assert fits["fits"] is True and fits["suggested_profile"] == "colab-t4"
    assert fits["estimate"]["total"] < 0.9 * T4["memory_gib"]
    printed = capsys.readouterr().out
    assert "Tesla T4: 15.0 GiB GPU, no native bf16" in printed and "suggested profile: colab-t4" in printed
    assert "fp16 + 4-bit blocks, batch 1 x 512 tokens, LoRA r=16" in printed  # a T4 computes in fp16

    with pytest.raises(MemoryError) as error:
        architectures.preflight("meta-llama/Llama-2-7b-chat-hf", batch_size=1, seq_len=512, hardware=T4)
    message = str(error.value)
    for part in ("does not fit in Tesla T4's 15 GiB", "weights 12.6", "load the model in 4-bit", "batch_size=1", "seq_len=512",
                 "load_in_4bit=False", "'colab-t4'"):
        assert part in message, part
    # the same 16-bit 7B run fits an H100, which suggests the paper profile
    fits = architectures.preflight("meta-llama/Llama-2-7b-chat-hf", batch_size=8, seq_len=512, hardware=H100)
    assert fits["fits"] is True and fits["suggested_profile"] == "paper"


def test_on_the_cpu_and_for_unknown_models_preflight_only_reports(capsys):
    report = architectures.preflight("llama-2-7b", batch_size=64, seq_len=4096, hardware=CPU)  # would not fit anything
    assert report["fits"] is None and report["estimate"]["total"] > 100 and report["suggested_profile"] == "cpu-demo"
    assert "not checked (no CUDA GPU)" in capsys.readouterr().out
    report = architectures.preflight("tiny-random", batch_size=4, seq_len=256, hardware=T4)
    assert report["estimate"] is None and report["fits"] is None
    assert "none for 'tiny-random'" in capsys.readouterr().out
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        architectures.preflight("llama-2-7b", batch_size=0, seq_len=512, hardware=CPU)


def test_detection_of_a_t4_and_an_h100(monkeypatch):
    _fake_gpu(monkeypatch, "Tesla T4", 15.0, native_bf16=False)
    found = models.describe_hardware()
    assert (found["device"], found["cuda"], found["name"], found["memory_gib"], found["gpu_count"]) == ("cuda", True, "Tesla T4", 15.0, 1)
    assert found["bf16"] is False  # torch says bf16 is "supported" on a T4 (emulated, slow): native only counts
    assert models.pick_dtype("auto") == torch.float16
    assert architectures.suggest_profile(found) == "colab-t4"

    _fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", 79.2, native_bf16=True, count=8)
    found = models.describe_hardware()
    assert (found["name"], found["memory_gib"], found["bf16"], found["gpu_count"]) == ("NVIDIA H100 80GB HBM3", 79.2, True, 8)
    assert models.pick_dtype("auto") == torch.bfloat16
    assert architectures.suggest_profile(found) == "paper"
    # a 40 GB+ GPU without native bf16 stays on the T4-style profile
    assert architectures.suggest_profile({"cuda": True, "memory_gib": 48.0, "bf16": False}) == "colab-t4"
    assert architectures.suggest_profile(CPU) == "cpu-demo"


def test_preflight_reads_the_hardware_itself(monkeypatch, capsys):
    _fake_gpu(monkeypatch, "Tesla T4", 15.0, native_bf16=False)
    with pytest.raises(MemoryError, match="Tesla T4"):
        architectures.preflight("qwen2.5-7b", batch_size=2, seq_len=1024)
    assert architectures.preflight("Qwen/Qwen2.5-0.5B-Instruct", batch_size=16, seq_len=256, load_in_4bit=True)["fits"] is True
    assert "Tesla T4" in capsys.readouterr().out


def test_the_colab_t4_profile_is_sized_for_a_15_gb_t4():
    """SFT and PPO of the colab-t4 profile fit 90% of 15 GB in fp16; its SFT batch of 16 x 512 tokens in one pass would not."""
    report = architectures.preflight_profile("colab-t4", T4)
    assert set(report) == {"03_lora_sft", "04_ppo"} and all(r["fits"] for r in report.values())
    assert all(r["estimate"]["total"] <= 0.9 * 15.0 for r in report.values())
    with pytest.raises(MemoryError, match=r"colab-t4.*03_lora_sft.*'batch_size': 16"):
        architectures.preflight_profile("colab-t4", T4, changes={"03_lora_sft": {"batch_size": 16, "gradient_accumulation_steps": 1}})
    with pytest.raises(MemoryError, match="04_ppo"):
        architectures.preflight_profile("colab-t4", T4, changes={"04_ppo": {"batch_size": 32, "prompts_per_step": 32}})


def test_the_paper_profile_fits_one_80_gb_gpu_with_the_authors_checkpointing():
    assert all(r["fits"] for r in architectures.preflight_profile("paper", H100).values())
    with pytest.raises(MemoryError, match="gradient_checkpointing': False"):
        architectures.preflight_profile("paper", H100, changes={"03_lora_sft": {"gradient_checkpointing": False}})


def test_the_runner_checks_a_profile_on_a_gpu_before_running_anything():
    from nlu_helpers import runner

    runner.check_memory("colab-t4", {}, hardware=T4)  # fits: nothing raised
    small = {**T4, "memory_gib": 6.0}
    with pytest.raises(MemoryError, match="colab-t4"):
        runner.check_memory("colab-t4", {}, hardware=small)
    runner.check_memory("colab-t4", {"model": "some/other-model"}, hardware=small)  # another model: its own notebook checks
    runner.check_memory("smoke", {}, hardware=small)  # tiny-random: unknown architecture, not checked here
    runner.check_memory("colab-t4", {}, hardware={"cuda": False})  # the CPU: no check
