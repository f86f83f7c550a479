"""The benchmark entry point (``python -m benchmarks.run``) on tiny models with the smallest sizes.

A benchmark is a script that prints figures: these tests check that it runs, prints its
table and writes every field of its JSON, that PPO's phase times are the ones its own log
rows record, and that the bounds are computed as documented and flag a beaten bound.
They never assert on speed.
"""

import json
from pathlib import Path

import pytest
import torch

from benchmarks import eval_speed, run
from nlu_helpers import architectures

TINY = ["--model", "tiny-random", "--quick", "--threads", "1", "--warmup", "0", "--steps", "1", "--sft-steps", "1",
        "--eval-rows", "4", "--probe-repeats", "2"]

META = {"command", "model", "random_weights", "weights", "preset", "task", "parts", "device", "dtype", "threads", "hardware",
        "hardware_info", "in_process", "sizes", "versions", "started", "note", "ppo_config", "seconds_total"}
MODEL = {"parameters", "trainable_parameters", "matmul_parameters", "layer_matmul_parameters", "lm_head_parameters",
         "lora_parameters", "linear_shapes", "attention_width", "weight_bytes_read_per_decode_step",
         "kv_bytes_per_token", "dtype", "device", "attn_implementation", "tied_embeddings", "hidden_size", "intermediate_size",
         "num_hidden_layers", "vocab_size"}
MEMORY = {"peak_gib", "peak_rss_gib", "seconds_total", "load_average", "model"}
EVAL_MODE = {"examples_per_s", "seconds", "accuracy", "unparseable", "peak_gib"}
EVAL = MEMORY | {"rows", "batch_size", "mean_prompt_tokens", "generate", "score"}
SFT = MEMORY | {"trainable_parameters", "total_parameters", "batch_size", "gradient_accumulation_steps", "sequences_per_step",
                "steps_measured", "step_seconds", "median_step_s", "steps_per_s", "tokens_per_step", "tokens_per_s", "step_peak_gib"}
PHASE = {"median_s", "seconds"}
PPO = MEMORY | {"trainable_parameters", "config", "steps_measured", "step_seconds", "median_step_s", "step_wall_seconds",
                "phases", "phase_source", "log_rows", "memory", "samples_per_step", "seconds_per_sample", "mean_response_tokens",
                "mean_reward", "prompt_width", "response_width", "update_tokens", "update_work", "profile", "dtype", "kv_cache",
                "torch_threads"}
UPDATE_WORK = {"epochs", "tokens", "answer_tokens", "sum_squared_lengths", "minibatch_tokens", "minibatch_answer_tokens"}
GRPO = MEMORY | {"trainable_parameters", "num_generations", "prompts_per_cycle", "completions_per_cycle",
                 "steps_per_cycle", "steps_per_generation", "num_iterations", "per_device_train_batch_size",
                 "activation_checkpointing", "cycles_measured", "cycle_seconds", "step_seconds", "median_cycle_s",
                 "seconds_per_sample", "phases", "phase_source", "device", "dtype", "mean_completion_tokens", "mean_reward"}
BOUNDS = {"bandwidth_bytes_per_s", "peak_flops", "rates_source", "probe", "flags", "decode", "update", "score_floor"}
UPDATE = {"model_flops", "seconds_at_peak", "measured_s", "mfu", "mfu_lora_4n", "flops_done", "achieved_flops_per_s",
          "utilisation", "exceeds_peak"}
PROBE_SHAPE = {"shape", "calls_per_repeat", "best_flops", "median_flops", "worst_flops", "relative_spread"}
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
    ppo = result["ppo"]
    _has(ppo, PPO, "ppo")
    _has(ppo["update_work"], UPDATE_WORK, "ppo.update_work")
    assert set(ppo["phases"]) == {*run.PPO_PHASES, "other"}
    for phase in ppo["phases"].values():
        _has(phase, PHASE, "ppo.phases")
    assert ppo["memory"]["step_peak_gib"] > 0 and ppo["memory"]["no_update_peak_gib"] > 0
    _has(result["grpo"], GRPO, "grpo")
    for phase in ("generate_and_score", "update"):
        _has(result["grpo"]["phases"][phase], PHASE | {"peak_gib"}, f"grpo.phases.{phase}")
    _has(result["bounds"], BOUNDS, "bounds")
    _has(result["bounds"]["decode"], DECODE, "bounds.decode")
    _has(result["bounds"]["update"], UPDATE, "bounds.update")
    probe = result["bounds"]["probe"]["matmul"]
    assert probe["repeats"] == 2 and result["bounds"]["probe"]["copy"]["repeats"] == 2
    # the update's own shapes: every decoder linear layer at the mini-batch's tokens, the LM head at its answer tokens
    layers = result["model"]["linear_shapes"]["layers"]
    assert [s["shape"] for s in probe["shapes"]] == ([[ppo["update_work"]["minibatch_tokens"], i, o] for i, o, _n in layers]
                                                     + [[ppo["update_work"]["minibatch_answer_tokens"], *result["model"]["linear_shapes"]["head"]]])
    for shape in probe["shapes"]:
        _has(shape, PROBE_SHAPE, "bounds.probe.matmul.shapes")
    assert result["bounds"]["peak_flops"] == probe["peak_flops"] == max(s["best_flops"] for s in probe["shapes"])
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
    # the profiled step's phases are the torch.profiler ranges PPOTrainer.step labels itself
    assert set(ppo["profile"]["phases"]) == set(run.PPO_PHASES) and all(s > 0 for s in ppo["profile"]["phases"].values())
    assert returned == result
    table = capsys.readouterr().out
    for text in ("eval generate", "eval score", "sft", "tokens/s", "trainable parameters", "rollout (generation)",
                 "reference", "KL rewards, GAE", "update", "grpo (TRL)", "s per generated sample", "rate probe", "decoding:",
                 "FLOPs done", "MFU", "target PPO s/sample", "target PPO peak", "load average"):
        assert text in table, text


def test_ppo_phase_times_are_the_log_rows_of_the_timed_steps(tmp_path):
    """No function is replaced to time PPO: each phase's seconds are its log rows' ``seconds_<phase>``, and
    with the rest (KL controller, logging) they make up ``seconds_step``, itself inside the wall time around step()."""
    out = tmp_path / "bench.json"
    run.main(TINY + ["--parts", "ppo", "--steps", "2", "--in-process", "--json", str(out)])
    ppo = json.loads(out.read_text())["ppo"]
    rows = ppo["log_rows"]
    assert len(rows) == ppo["steps_measured"] == 2 and [r["step"] for r in rows] == [1, 2]
    assert ppo["step_seconds"] == [r["seconds_step"] for r in rows]
    for name in run.PPO_PHASES:
        assert ppo["phases"][name]["seconds"] == [r[f"seconds_{name}"] for r in rows]
        assert all(s > 0 for s in ppo["phases"][name]["seconds"])
    for i, row in enumerate(rows):
        phases = sum(row[f"seconds_{name}"] for name in run.PPO_PHASES)
        assert ppo["phases"]["other"]["seconds"][i] == pytest.approx(row["seconds_step"] - phases)
        assert 0.75 * row["seconds_step"] <= phases <= row["seconds_step"]  # the rest is bookkeeping
        assert row["seconds_scoring"] == pytest.approx(row["seconds_reward"] + row["seconds_reference"] + row["seconds_advantages"])
        assert row["seconds_step"] <= ppo["step_wall_seconds"][i]


def test_ppo_phases_from_log_rows():
    rows = [{"seconds_rollout": 1.0, "seconds_reward": 0.01, "seconds_reference": 0.5, "seconds_advantages": 0.02,
             "seconds_update": 3.0, "seconds_step": 4.6},
            {"seconds_rollout": 2.0, "seconds_reward": 0.01, "seconds_reference": 0.7, "seconds_advantages": 0.02,
             "seconds_update": 5.0, "seconds_step": 7.8}]
    phases = run.ppo_phases(rows)
    assert phases["rollout"] == {"median_s": 1.5, "seconds": [1.0, 2.0]}
    assert phases["other"]["seconds"] == pytest.approx([0.07, 0.07])


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
              "--peak-tflops", "989", "--weights-dir", str(tmp_path / "weights"), "--static-cache"] + TINY[2:] + ["--json", str(out)])
    result = json.loads(out.read_text())
    assert result["meta"]["random_weights"] is True and result["meta"]["dtype"] == "bfloat16"
    # written once as a model folder that the package's own loaders read by path
    folder = Path(result["meta"]["weights"])
    assert folder.parent == tmp_path / "weights" and (folder / "config.json").is_file() and (folder / "benchmark-random.json").is_file()
    stamp = (folder / "benchmark-random.json").stat().st_mtime_ns
    assert run.random_model_folder("tiny-qwen2", device="cpu", dtype=torch.bfloat16, root=tmp_path / "weights") == folder
    assert (folder / "benchmark-random.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert result["model"]["dtype"] == "bfloat16" and result["model"]["attn_implementation"] == "sdpa"
    assert result["model"]["vocab_size"] == 49152  # widened from 1000 to the embedded tokenizer's
    assert result["model"]["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 2  # K and V x layers x kv heads x head dim x bf16
    assert result["bounds"]["bandwidth_bytes_per_s"] == 3.35e12 and result["bounds"]["peak_flops"] == 989e12
    # --static-cache: the same trainer again with a fixed-size cache, what gpu_check's bench-7b runs
    static = result["ppo"]["static_cache"]
    assert static["rows_compared"] == result["ppo"]["samples_per_step"] and 0 <= static["same_samples"] <= 1
    assert static["steps_measured"] == result["ppo"]["steps_measured"] and set(static["phases"]) == set(run.PPO_PHASES) | {"other"}
    assert result["bounds"]["decode_static"]["generation_measured_s"] == static["phases"]["rollout"]["median_s"]
    printed = capsys.readouterr().out
    assert "decoding:" in printed and "decoding, static cache:" in printed


MODEL_7B = {"weight_bytes_read_per_decode_step": 14e9, "kv_bytes_per_token": 1e5, "matmul_parameters": 7e9,
            "layer_matmul_parameters": 6e9, "lora_parameters": 2e7, "lm_head_parameters": 5e8, "num_hidden_layers": 28,
            "attention_width": 3584}
WORK = {"epochs": 4, "tokens": 16 * 130, "answer_tokens": 16 * 30, "sum_squared_lengths": 16 * 130**2,
        "minibatch_tokens": 8 * 130, "minibatch_answer_tokens": 8 * 30}


def _ppo(update_s: float) -> dict:
    return {"ppo": {"model": MODEL_7B, "samples_per_step": 16, "prompt_width": 100, "response_width": 30,
                    "phases": {"rollout": {"median_s": 2.0}, "update": {"median_s": update_s}}, "update_tokens": 4 * 16 * 130,
                    "update_work": WORK}, "eval": None}


def test_bounds_follow_their_formulas():
    figures = run.bounds(_ppo(4.0), {"bandwidth_bytes_per_s": 3.35e12, "peak_flops": 989e12, "source": "test"})
    step_bytes = 14e9 + 16 * (100 + 15) * 1e5  # weights + KV cache at the mean context
    assert figures["decode"]["bytes_per_step"] == pytest.approx(step_bytes)
    assert figures["decode"]["bound_ms_per_step"] == pytest.approx(1e3 * step_bytes / 3.35e12)
    prefill = max(2 * 7e9 * 16 * 100 / 989e12, 14e9 / 3.35e12)
    assert figures["decode"]["generation_bound_s"] == pytest.approx(prefill + 30 * step_bytes / 3.35e12)
    assert figures["update"]["mfu"] == pytest.approx(6 * 7e9 * 4 * 16 * 130 / 4.0 / 989e12)
    # what the LoRA update does: frozen weights forward + input gradients (4), LoRA (6), the head on answers (4),
    # causal attention (6 x width x layers x L^2)
    done = 4 * (4 * 6e9 * 2080 + 6 * 2e7 * 2080 + 4 * 5e8 * 480 + 6 * 28 * 3584 * 16 * 130**2)
    assert figures["update"]["flops_done"] == pytest.approx(done)
    assert figures["update"]["utilisation"] == pytest.approx(done / 4.0 / 989e12)
    assert figures["update"]["exceeds_peak"] is False and figures["flags"] == []


def test_an_update_faster_than_the_peak_is_flagged():
    """A bound the program beats is no bound: the figure stays, and a flag says so."""
    done = run.update_flops(MODEL_7B, WORK)
    peak = done / 1.0 / 1.2  # the update ran at 120% of this "peak"
    figures = run.bounds(_ppo(1.0), {"bandwidth_bytes_per_s": 3.35e12, "peak_flops": peak, "source": "test"})
    assert figures["update"]["utilisation"] == pytest.approx(1.2) and figures["update"]["exceeds_peak"] is True
    assert any("no bound" in flag for flag in figures["flags"])


def test_matmul_probe_takes_the_best_of_its_repeats_and_reports_the_spread():
    probe = eval_speed.matmul_probe([(32, 16, 24), (8, 16, 64)], repeats=3, min_seconds=0.001)
    assert probe["repeats"] == 3 and [s["shape"] for s in probe["shapes"]] == [[32, 16, 24], [8, 16, 64]]
    for shape in probe["shapes"]:
        assert shape["worst_flops"] <= shape["median_flops"] <= shape["best_flops"]
        assert shape["relative_spread"] == pytest.approx((shape["best_flops"] - shape["worst_flops"]) / shape["best_flops"])
    assert probe["peak_flops"] == max(s["best_flops"] for s in probe["shapes"])
    assert probe["max_relative_spread"] == max(s["relative_spread"] for s in probe["shapes"])


def test_lm_eval_task_file_stores_exactly_our_prompts_and_continuations(tmp_path):
    """The lm-eval comparison scores the strings our evaluation scores: each stored prompt is
    ``task.build_prompt(row, shots)``, the choices are our continuations, and the YAML adds nothing
    (no delimiter before a choice, no description, no demonstrations of lm-eval's). No lm_eval needed."""
    import yaml

    from benchmarks import lm_eval_compare
    from nlu_helpers import evaluation
    from nlu_helpers.tasks import get_task

    task = get_task("movie-snippets")
    rows = [{"sentence": 'A "quoted" {{ braces }} review\nwith a newline', "label": 1, "idx": 7},
            {"sentence": "Flat and dull.", "label": 0, "idx": 8}]
    shots = [{"sentence": "Wonderful.", "label": 1, "idx": 1}, {"sentence": "Awful.", "label": 0, "idx": 2}]
    config_path, records, continuations = lm_eval_compare.write_lm_eval_task(tmp_path, task, rows, shots, name="tiny_task")
    stored = [json.loads(line) for line in (tmp_path / "tiny_task.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in stored] == [task.build_prompt(row, shots) for row in rows]
    assert [r["label"] for r in stored] == [1, 0] and stored == records
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    assert config["doc_to_choice"] == continuations == evaluation._continuations(task) == [" Negative", " Positive"]
    assert config["output_type"] == "multiple_choice" and config["task"] == "tiny_task"
    assert config["doc_to_text"] == "prompt" and config["doc_to_target"] == "label"  # column names: read as is, no template
    assert config["target_delimiter"] == "" and config["description"] == "" and config["num_fewshot"] == 0
    assert Path(config["dataset_kwargs"]["data_files"]["validation"]) == tmp_path / "tiny_task.jsonl"
    with pytest.raises(ValueError, match="classification"):
        lm_eval_compare.prompt_rows(get_task("stsb"), [{"sentence1": "a", "sentence2": "b", "label": 3.0}])


def test_lm_eval_compare_names_the_install_command_when_lm_eval_is_missing(monkeypatch):
    import sys

    from benchmarks import lm_eval_compare

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ModuleNotFoundError
    with pytest.raises(SystemExit, match=r"pip install 'lm-eval==0\.4\.13'"):
        lm_eval_compare.import_lm_eval()


def test_ppo_recipe_runs_name_their_one_change_and_refuse_unknown_ones():
    from benchmarks import ppo_recipe

    assert ppo_recipe.RUNS["base"] == {} and all(len(changes) == 1 for name, changes in ppo_recipe.RUNS.items() if name != "base")
    with pytest.raises(SystemExit, match="unknown \\['kl-9'\\]; allowed: base, lr-5e-5"):
        ppo_recipe.main(["--runs", "base,kl-9"])
    with pytest.raises(SystemExit, match="--sft-adapter"):
        ppo_recipe.one_run("from-sft", "movie-snippets", None, 0)
