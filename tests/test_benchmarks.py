"""The benchmark entry point (``python -m benchmarks.run``) on tiny models with the smallest sizes.

A benchmark is a script that prints figures: these tests check that it runs, prints its
table and writes every field of its JSON, and that the bounds are computed as documented.
They never assert on speed.
"""

import json

import pytest
import torch

from benchmarks import run
from nlu_helpers import architectures

TINY = ["--model", "tiny-random", "--quick", "--threads", "1", "--warmup", "0", "--steps", "1", "--sft-steps", "1",
        "--eval-rows", "4"]

META = {"command", "model", "random_weights", "preset", "task", "parts", "device", "dtype", "threads", "hardware",
        "hardware_info", "in_process", "sizes", "versions", "started", "note", "ppo_config", "seconds_total"}
MODEL = {"parameters", "trainable_parameters", "matmul_parameters", "weight_bytes_read_per_decode_step",
         "kv_bytes_per_token", "dtype", "attn_implementation", "tied_embeddings", "hidden_size", "intermediate_size",
         "num_hidden_layers", "vocab_size"}
MEMORY = {"peak_gib", "peak_rss_gib", "seconds_total", "load_average", "model"}
EVAL_MODE = {"examples_per_s", "seconds", "accuracy", "unparseable", "peak_gib"}
EVAL = MEMORY | {"rows", "batch_size", "mean_prompt_tokens", "generate", "score"}
SFT = MEMORY | {"trainable_parameters", "total_parameters", "batch_size", "gradient_accumulation_steps", "sequences_per_step",
                "steps_measured", "step_seconds", "median_step_s", "steps_per_s", "tokens_per_step", "tokens_per_s"}
PHASE = {"median_s", "peak_gib"}
PPO = MEMORY | {"trainable_parameters", "config", "steps_measured", "step_seconds", "median_step_s", "phases",
                "samples_per_step", "seconds_per_sample", "mean_response_tokens", "mean_reward", "prompt_width",
                "response_width", "update_tokens", "profile", "dtype", "kv_cache", "torch_threads"}
GRPO = MEMORY | {"trainable_parameters", "num_generations", "prompts_per_cycle", "completions_per_cycle",
                 "steps_per_cycle", "steps_per_generation", "num_iterations", "per_device_train_batch_size",
                 "activation_checkpointing",
                 "cycles_measured", "cycle_seconds", "median_cycle_s", "seconds_per_sample", "phases",
                 "mean_completion_tokens", "mean_reward"}
BOUNDS = {"bandwidth_bytes_per_s", "peak_flops", "rates_source", "decode", "update", "score_floor"}
DECODE = {"bytes_per_step", "bound_ms_per_step", "bound_tokens_per_s", "measured_ms_per_step", "generation_bound_s",
          "generation_measured_s", "fraction_of_bound"}
TARGET = {"ratio", "goal", "met"}


@pytest.fixture(autouse=True)
def keep_threads():
    """--threads sets torch's thread count in this process (--in-process); put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _has(record: dict, keys: set, where: str) -> None:
    missing = keys - set(record)
    assert not missing, f"{where} lacks {sorted(missing)}"


def test_every_part_in_one_process_writes_every_field_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    returned = run.main(TINY + ["--in-process", "--json", str(out), "--profile", str(tmp_path / "profile")])
    result = json.loads(out.read_text())
    assert result["meta"]["parts"] == list(run.PARTS)
    _has(result, {"meta", "model", *run.PARTS, "bounds", "targets"}, "the JSON")
    _has(result["meta"], META, "meta")
    _has(result["model"], MODEL, "model")
    _has(result["eval"], EVAL, "eval")
    for mode in ("generate", "score"):
        _has(result["eval"][mode], EVAL_MODE, f"eval.{mode}")
    _has(result["sft"], SFT, "sft")
    _has(result["ppo"], PPO, "ppo")
    for phase in ("generate", "score", "reference", "update", "other"):
        _has(result["ppo"]["phases"][phase], PHASE, f"ppo.phases.{phase}")
    _has(result["grpo"], GRPO, "grpo")
    for phase in ("generate", "score", "update"):
        _has(result["grpo"]["phases"][phase], PHASE, f"grpo.phases.{phase}")
    _has(result["bounds"], BOUNDS, "bounds")
    _has(result["bounds"]["decode"], DECODE, "bounds.decode")
    _has(result["bounds"]["update"], {"model_flops", "seconds_at_peak", "measured_s", "mfu", "mfu_lora_4n"}, "bounds.update")
    for name in ("ppo_vs_grpo_seconds_per_sample", "ppo_vs_sft_peak_memory"):
        _has(result["targets"][name], TARGET, f"targets.{name}")
    # same work on both sides of the PPO/GRPO comparison
    assert result["grpo"]["completions_per_cycle"] == result["ppo"]["samples_per_step"]
    assert result["grpo"]["num_iterations"] == result["ppo"]["config"]["ppo_epochs"]
    assert result["grpo"]["per_device_train_batch_size"] == result["ppo"]["config"]["batch_size"]
    assert result["sft"]["batch_size"] == result["ppo"]["config"]["batch_size"]
    # the trainable-parameter count is there (LoRA only; PPO adds the value head's H + 1)
    assert 0 < result["sft"]["trainable_parameters"] < result["sft"]["total_parameters"]
    assert result["ppo"]["trainable_parameters"] == result["sft"]["trainable_parameters"] + result["model"]["hidden_size"] + 1
    assert result["model"]["attn_implementation"] == "sdpa"
    assert (tmp_path / "profile" / "ppo-profile.txt").is_file()
    assert returned == result
    table = capsys.readouterr().out
    for text in ("eval generate", "eval score", "sft", "tokens/s", "trainable parameters", "rollout generation",
                 "reference scoring", "update", "grpo (TRL)", "s per generated sample", "decoding:", "MFU",
                 "target PPO s/sample", "target PPO peak", "load average"):
        assert text in table, text


def test_a_part_runs_in_its_own_process(tmp_path, capsys):
    out = tmp_path / "bench.json"
    run.main(TINY + ["--parts", "eval", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["meta"]["in_process"] is False
    assert result["eval"]["peak_rss_gib"] > 0 and result["sft"] is None and result["ppo"] is None
    assert result["targets"] == {}
    assert "eval score" in capsys.readouterr().out


def test_gpu_path_on_a_tiny_random_architecture_in_bf16(tmp_path, monkeypatch, capsys):
    """What a GPU run does with qwen2.5-7b, on a tiny configuration: an architecture name gets random
    weights (vocabulary widened to the tokenizer's), bf16 weights, SDPA, and bounds against the given rates."""
    tiny = dict(architectures.ARCHITECTURES["qwen2.5-0.5b"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)
    monkeypatch.setitem(architectures.ARCHITECTURES, "tiny-qwen2", tiny)
    out = tmp_path / "bench.json"
    run.main(["--model", "tiny-qwen2", "--dtype", "bf16", "--parts", "eval,ppo", "--in-process", "--bandwidth-tbs", "3.35",
              "--peak-tflops", "989"] + TINY[2:] + ["--json", str(out)])
    result = json.loads(out.read_text())
    assert result["meta"]["random_weights"] is True and result["meta"]["dtype"] == "bfloat16"
    assert result["model"]["dtype"] == "bfloat16" and result["model"]["attn_implementation"] == "sdpa"
    assert result["model"]["vocab_size"] == 49152  # widened from 1000 to the embedded tokenizer's
    assert result["model"]["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 2  # K and V x layers x kv heads x head dim x bf16
    assert result["bounds"]["bandwidth_bytes_per_s"] == 3.35e12 and result["bounds"]["peak_flops"] == 989e12
    assert "decoding:" in capsys.readouterr().out


def test_bounds_follow_their_formulas():
    model = {"weight_bytes_read_per_decode_step": 14e9, "kv_bytes_per_token": 1e5, "matmul_parameters": 7e9}
    result = {"ppo": {"model": model, "samples_per_step": 16, "prompt_width": 100, "response_width": 30,
                      "phases": {"generate": {"median_s": 2.0}, "update": {"median_s": 4.0}}, "update_tokens": 4 * 16 * 130},
              "eval": None}
    figures = run.bounds(result, {"bandwidth_bytes_per_s": 3.35e12, "peak_flops": 989e12, "source": "test"})
    step_bytes = 14e9 + 16 * (100 + 15) * 1e5  # weights + KV cache at the mean context
    assert figures["decode"]["bytes_per_step"] == pytest.approx(step_bytes)
    assert figures["decode"]["bound_ms_per_step"] == pytest.approx(1e3 * step_bytes / 3.35e12)
    prefill = max(2 * 7e9 * 16 * 100 / 989e12, 14e9 / 3.35e12)
    assert figures["decode"]["generation_bound_s"] == pytest.approx(prefill + 30 * step_bytes / 3.35e12)
    assert figures["update"]["mfu"] == pytest.approx(6 * 7e9 * 4 * 16 * 130 / 4.0 / 989e12)
