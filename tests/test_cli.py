"""The one command line, ``nlu-workbook <command>`` / ``python -m nlu_helpers <command>``: parameters from
the command line, YAML files and profiles; one-line errors (exit code 2) for every bad input, found
before any model is loaded; renamed options named; the eval, tasks, run and launch-config commands.
Two-process runs under ``accelerate launch`` are in ``tests/test_distributed.py``."""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from nlu_helpers import cli, evaluation, models, ppo, runner, sft, tasks
from nlu_helpers.arguments import UsageError, build_parser, parse, ppo_config, sft_settings

ROOT = Path(__file__).resolve().parents[1]
TASK = "movie-snippets"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything tries to load a model or train: inputs are checked before that."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded (or training started) before the inputs were checked")

    for owner, name in ((models, "load_model"), (models, "load_tokenizer"), (sft, "train_sft"), (ppo, "train_ppo"),
                        (ppo, "PPOTrainer"), (evaluation, "evaluate")):
        monkeypatch.setattr(owner, name, refuse)


def _error(capsys, argv):
    """Run the command line in-process; its exit code and its one error line."""
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return code, err


# --------------------------------------------------------------------------- accelerate configs


@pytest.mark.parametrize("name, kind, stage", [("single_gpu", "NO", None), ("multi_gpu", "MULTI_GPU", None),
                                               ("deepspeed_zero2", "DEEPSPEED", 2), ("deepspeed_zero3", "DEEPSPEED", 3)])
def test_shipped_accelerate_configs_load_in_accelerate(name, kind, stage):
    from accelerate.commands.config.config_args import load_config_from_file

    path = cli.accelerate_config(name)
    assert path == cli.accelerate_config(name.replace("_", "-") + ".yaml") and path.is_file()
    config = load_config_from_file(str(path))  # accelerate's own reader: unknown keys would fail here
    assert config.distributed_type.value == kind
    assert (config.deepspeed_config or {}).get("zero_stage") == stage
    if stage == 3:
        assert config.deepspeed_config["zero3_save_16bit_model"] is True  # the Trainer gathers weights to save
    raw = yaml.safe_load(path.read_text())
    assert raw["num_machines"] == 1 and raw["mixed_precision"] in ("no", "bf16")
    assert "-m nlu_helpers sft" in path.read_text() or "-m nlu_helpers ppo" in path.read_text()  # the comment's example


def test_accelerate_configs_are_package_data_and_printed_by_launch_config(capsys):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "accelerate_configs/*.yaml" in project["tool"]["setuptools"]["package-data"]["nlu_helpers"]
    assert not any(r.startswith("deepspeed") for r in project["project"]["dependencies"])  # an extra, never required
    assert project["project"]["optional-dependencies"]["deepspeed"][0].startswith("deepspeed")
    assert cli.main(["launch-config", "multi_gpu"]) == 0
    assert capsys.readouterr().out.strip() == str(cli.accelerate_config("multi_gpu"))
    assert cli.main(["launch-config"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == len(cli.ACCELERATE_CONFIGS)
    code, err = _error(capsys, ["launch-config", "fsdp"])
    assert code == 2 and err == ("nlu-workbook launch-config: error: unknown accelerate config 'fsdp'; "
                                 "allowed: single_gpu, multi_gpu, deepspeed_zero2, deepspeed_zero3")


# --------------------------------------------------------------------------- one entry point


def test_one_entry_point_and_no_import_cycle():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"nlu-workbook": "nlu_helpers.cli:main"}
    assert not (ROOT / "nlu_helpers" / "launch.py").exists()
    package = ROOT / "nlu_helpers"
    for module in package.glob("*.py"):
        source = module.read_text()
        if module.name != "__main__.py":
            assert 'if __name__ == "__main__"' not in source, f"{module.name} is an entry point of its own"
        if module.name not in ("cli.py", "arguments.py", "__main__.py"):  # the command line imports the package, never the reverse
            assert not re.search(r"from nlu_helpers(\.| import )(cli|arguments)\b|import nlu_helpers\.(cli|arguments)", source), module.name


def test_python_m_nlu_helpers_answers_in_one_line_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "nlu_helpers", "ppo", "--ppo-steps", "0"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == ("nlu-workbook ppo: error: ppo_steps must be >= 1 (null: `passes` passes over the training rows), "
                                   "got 0")
    done = subprocess.run([sys.executable, "-m", "nlu_helpers", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0
    for command in ("setup", "run", "eval", "sft", "ppo", "tasks", "launch-config"):
        assert f"  {command} " in done.stdout


# --------------------------------------------------------------------------- parameters


def test_sft_parameters_from_defaults_file_profile_and_command_line(tmp_path):
    values = parse("sft", [])
    assert (values["model"], values["task"], values["preset"], values["output_dir"]) == ("embedded", TASK, "cpu-demo", "runs/cli")
    assert sft_settings(values) == sft.CPU_DEMO

    config = tmp_path / "sft.yaml"
    config.write_text("model: tiny-random\nlearning_rate: 1e-2\nbatch-size: 8\nlora_target_modules: [q_proj, k_proj]\npreset: paper\n")
    values = parse("sft", ["--config", str(config), "--batch_size", "4", "--packing", "--max-steps", "null"])
    assert values["model"] == "tiny-random"
    assert sft_settings(values) == sft.PAPER.replace(learning_rate=1e-2, batch_size=4, lora_target_modules=("q_proj", "k_proj"),
                                                     packing=True, max_steps=None)  # 1e-2 is a number, not YAML 1.1's string
    # the same preset values are taken whatever the default preset's are: --preset paper --learning-rate <cpu-demo's>
    assert sft_settings(parse("sft", ["--preset", "paper", "--learning-rate", "2e-4"])) == sft.PAPER.replace(learning_rate=2e-4)

    # a workbook profile: its parameters and notebook 03's, without the notebook-only ones
    values = parse("sft", ["--config", "colab-t4", "--max-steps", "5"])
    assert values["model"] == "Qwen/Qwen2.5-0.5B-Instruct" and values["train_limit"] == 4000
    assert sft_settings(values) == sft.CPU_DEMO.replace(max_steps=5, batch_size=8, gradient_accumulation_steps=2, max_length=512,
                                                        learning_rate=2e-4, load_in_4bit=True)  # sized for a 15 GB T4
    assert "eval_batch_size" not in values and "n_bootstrap" not in values


def test_ppo_parameters_as_notebook_04_names_them(tmp_path):
    values = parse("ppo", ["--preset", "paper", "--learning-rate", "null", "--temperature", "0.7", "--max-new-tokens", "8",
                           "--ppo-steps", "40", "--restart"])
    assert ppo_config(values) == ppo.preset("paper", temperature=0.7, max_new_tokens=(8, 8))  # null lr: the preset's
    assert (values["ppo_steps"], values["start_from"], values["restart"]) == (40, "base", True)
    # the smoke profile: 04's preset, steps and rows; its max_new_tokens is for evaluation there, not the rollout range
    values = parse("ppo", ["--config", "smoke"])
    assert (values["preset"], values["ppo_steps"], values["train_limit"], values["model"]) == ("smoke", 3, 16, "tiny-random")
    assert ppo_config(values) == ppo.SMOKE  # the profile adds seed 0, which SMOKE has
    assert ppo_config(parse("ppo", ["--max-new-tokens", "[4, 9]"])).max_new_tokens == (4, 9)
    assert ppo_config(parse("ppo", ["--reward", "{unparseable: -2.0}"])).reward.unparseable == -2.0

    assert cli.start_adapter_dir("base", tmp_path, TASK) is None
    with pytest.raises(UsageError, match="start_from='sft'.*sft-movie-snippets.*allowed: 'base', 'sft'"):
        cli.start_adapter_dir("sft", tmp_path, TASK)
    adapter = tmp_path / "adapters" / f"sft-{TASK}"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    assert cli.start_adapter_dir("sft", tmp_path, TASK) == adapter == cli.start_adapter_dir(str(adapter), "elsewhere", TASK)


def test_help_lists_run_parameters_and_every_settings_field_with_its_comment():
    text = " ".join(build_parser("ppo").format_help().split())
    for option in ("--config", "--start-from", "--ppo-steps", "--train-limit", "--learning-rate", "--kl-coef", "--weights-dump",
                   "--restart", "--batch-size", "--gradient-accumulation-steps", "--lora-target-modules", "--max-skipped-updates"):
        assert option in text, option
    assert "initial weight of the per-token KL penalty in the reward (cpu-demo preset: 0.05)" in text  # PPOConfig's comment
    text = " ".join(build_parser("sft").format_help().split())
    for option in ("--max-steps", "--load-in-4bit", "--restart", "--lora-r", "--gradient-checkpointing", "--lora-target-modules",
                   "--warmup-ratio", "--max-skipped-updates"):
        assert option in text, option
    assert "--overwrite" not in text and "--target-modules" not in text.replace("--lora-target-modules", "")
    text = " ".join(build_parser("eval").format_help().split())
    for option in ("--adapter", "--mode", "--shots", "--eval-limit", "--calibrate", "--stage"):
        assert option in text, option


def test_dump_weights_writes_only_trainable_weights(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    module[0].requires_grad_(False)
    path = cli.dump_weights(module, tmp_path, rank=1)
    assert path == tmp_path / "rank-1.safetensors" and sorted(load_file(path)) == ["1.bias", "1.weight"]
    with pytest.raises(ValueError, match="no trainable weights"):
        cli.dump_weights(module[0], tmp_path, rank=0)


# --------------------------------------------------------------------------- errors in one line, before any model


def _bad_inputs(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    (tmp_path / "typo.yaml").write_text("model: tiny-random\nlearning_rat: 1e-3\n")
    (tmp_path / "old.yaml").write_text("grad_accum: 2\n")
    (tmp_path / "bad-value.yaml").write_text("batch_size: many\n")
    return [
        (["ppo", "--task", "sst3"], "unknown task 'sst3'; known tasks: .*; did you mean 'sst2'"),
        (["ppo", "--preset", "fast"], "unknown PPO preset 'fast'; allowed: paper, cpu-demo, smoke"),
        (["sft", "--preset", "smoke"], "unknown SFT preset 'smoke'; allowed: cpu-demo, paper"),
        (["ppo", "--model", str(tmp_path / "no" / "such" / "model")], "model '.*/no/such/model': no such model folder; allowed: "
                                                                     "'embedded', 'tiny-random', a model folder or a hub id"),
        (["sft", "--model", str(empty)], "is a folder without a model in it \\(no config.json\\)"),
        (["ppo", "--learning-rate", "fast"], "--learning-rate: 'fast' is not a number \\(e.g. 2e-4\\)"),
        (["sft", "--learning-rate", ".inf"], "--learning-rate: inf is not a finite number"),
        (["ppo", "--max-new-tokens", "[31, 12]"], "max_new_tokens=\\(31, 12\\) is not allowed; allowed: \\(low, high\\) with 1 <= low <= high"),
        (["ppo", "--config", str(tmp_path / "typo.yaml")], "config '.*typo.yaml': unknown parameter 'learning_rat'; did you mean 'learning_rate'"),
        (["sft", "--config", str(tmp_path / "bad-value.yaml")], "config '.*bad-value.yaml': batch_size: 'many' is not a whole number"),
        (["ppo", "--config", "smoek"], "config 'smoek' is neither a YAML file nor a shipped profile; did you mean 'smoke'"),
        (["ppo", "--ppo-steps", "0"], "ppo_steps must be >= 1 \\(null: `passes` passes over the training rows\\), got 0"),
        (["ppo", "--ppo-steps", "-3"], "ppo_steps must be >= 1 .*, got -3"),
        (["ppo", "--checkpoint-every", "0"], "checkpoint_every must be >= 1, got 0"),
        (["sft", "--max-steps", "0"], "max_steps must be a positive integer, got 0"),
        (["sft", "--train-limit", "0"], "train_limit must be >= 1 \\(null: the whole split\\), got 0"),
        (["ppo", "--output-dir", str(a_file)], f"output_dir '{a_file}': '{a_file}' is a file, not a folder; give a folder$"),
        (["sft", "--output-dir", str(a_file / "sub")], f"'{a_file}' is a file, not a folder"),
        (["eval", "--output-dir", str(a_file)], f"'{a_file}' is a file, not a folder"),
        (["ppo", "--weights-dump", str(a_file)], f"weights_dump '{a_file}': '{a_file}' is a file"),
        (["ppo", "--output-dir", "/proc/self/runs"], "output_dir '/proc/self/runs' cannot be written"),  # even for root
        (["ppo", "--start-from", "sft", "--output-dir", str(tmp_path)], "start_from='sft': .* holds no adapter"),
        (["ppo", "--mini-batch-size", "2"], "--mini-batch-size was renamed: use --batch-size$"),
        (["ppo", "--grad-accum", "2"], "--grad-accum was renamed: use --gradient-accumulation-steps$"),
        (["ppo", "--grad_accum=2"], "--grad-accum was renamed: use --gradient-accumulation-steps$"),
        (["sft", "--target-modules", "all-linear"], "--target-modules was renamed: use --lora-target-modules$"),
        (["sft", "--overwrite"], "--overwrite was renamed: use --restart$"),
        (["ppo", "--resume", "false"], "--resume was renamed: use --restart \\(resuming is the default; --restart starts over\\)"),
        (["ppo", "--config", str(tmp_path / "old.yaml")], "config '.*old.yaml': 'grad_accum' was renamed: use 'gradient_accumulation_steps'"),
        (["ppo", "--lerning-rate", "1e-4"], "unknown option '--lerning-rate'; did you mean '--learning-rate'"),
        (["ppo", "--restart", "maybe"], "--restart: Truthy value expected"),
        (["eval", "--mode", "scor"], "--mode: invalid choice: 'scor' \\(choose from 'generate', 'score'\\)"),
        (["eval", "--calibrate"], "--calibrate needs --mode score on a classification task"),
        (["eval", "--adapter", str(empty)], "is not an adapter folder \\(no adapter_config.json\\)"),
        (["eval", "--k", "5"], "--k was renamed: use --shots$"),
        (["eval", "--shots", "-1"], "shots must be >= 0, got -1"),
        (["trian"], "unknown command 'trian'; commands: setup, run, eval, sft, ppo, tasks, launch-config"),
        (["tasks", "check"], "tasks check needs a FILE"),
    ]


def test_every_bad_input_gets_one_line_and_exit_code_2_before_any_model_is_loaded(no_model, capsys, tmp_path):
    for argv, message in _bad_inputs(tmp_path):
        code, err = _error(capsys, argv)
        prog = f"nlu-workbook {argv[0]}" if argv[0] != "trian" else "nlu-workbook"
        assert code == 2, (argv, err)
        assert err.startswith(f"{prog}: error: "), (argv, err)
        assert re.search(message, err), (argv, err)
    assert not any(tmp_path.glob("**/adapters")) and not any(tmp_path.glob("**/checkpoints"))  # nothing was written


def test_debug_shows_the_traceback_instead(no_model):
    with pytest.raises(UsageError, match="unknown task 'sst3'"):
        cli.main(["ppo", "--task", "sst3", "--debug"])


# --------------------------------------------------------------------------- commands


def test_tasks_lists_the_registry_and_checks_a_task_file(capsys, monkeypatch, tmp_path):
    assert cli.main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["task", "kind", "labels", "data"]
    rows = {line.split()[0]: " ".join(line.split()) for line in lines[1:]}
    assert rows["movie-snippets"] == "movie-snippets classification Negative / Positive embedded (offline)"
    assert rows["stsb"] == "stsb regression number 0-5 nyu-mll/glue (stsb)"
    assert rows["mnli"].startswith("mnli classification Entailment / Neutral / Contradiction")

    task_file = tmp_path / "mine.yaml"
    task_file.write_text("name: mine\n")
    monkeypatch.setattr(tasks, "check_task_file", lambda path: f"task file {str(path)!r}\n2 problems")
    assert cli.main(["tasks", "check", str(task_file)]) == 1  # problems: not a success
    assert capsys.readouterr().out.strip().endswith("2 problems")
    monkeypatch.setattr(tasks, "check_task_file", lambda path: "ok: no problems")
    assert cli.main(["tasks", "check", str(task_file)]) == 0
    code, err = _error(capsys, ["tasks", "check", str(tmp_path / "missing.yaml")])
    assert code == 2 and err.endswith("task file '" + str(tmp_path / "missing.yaml") + "' does not exist")
    monkeypatch.delattr(tasks, "check_task_file")
    code, err = _error(capsys, ["tasks", "check", str(task_file)])
    assert code == 2 and "cannot check task files (nlu_helpers.tasks.check_task_file is missing)" in err


def test_run_hands_its_arguments_to_the_runner(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(runner, "main", lambda args: seen.setdefault("args", args) and 7)
    assert cli.main(["run", "--profile", "smoke", "--only", "02", "04", "-p", "eval_limit=3", "-p", "k=0", "--force"]) == 7
    args = seen["args"]
    assert (args.profile, args.only, args.skip, args.param, args.force, args.output, args.resume) == (
        "smoke", ["02", "04"], None, ["eval_limit=3", "k=0"], True, None, None)
    code, err = _error(capsys, ["run", "--profil", "smoke"])
    assert code == 2 and err.startswith("nlu-workbook run: error: unrecognized arguments: --profil")


def test_eval_writes_a_results_file_as_notebook_02_does(tmp_path, capsys):
    argv = ["eval", "--model", "tiny-random", "--device", "cpu", "--mode", "score", "--shots", "2", "--eval-limit", "4",
            "--n-bootstrap", "20", "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    path = tmp_path / "results" / "eval-few-shot-movie-snippets-validation-score-k2.json"
    assert printed["result"] == str(path) and printed["n"] == 4
    record = json.loads(path.read_text())
    assert (record["stage"], record["task"], record["split"], record["mode"], record["k"], record["n"]) == (
        "few-shot", TASK, "validation", "score", 2, 4)
    assert record["model"] == "tiny-random" and record["adapter"] is None and "accuracy" in record["metrics"]
    assert printed["accuracy"] == round(record["metrics"]["accuracy"], 4)
    assert len((tmp_path / "results" / f"{path.stem}.predictions.jsonl").read_text().splitlines()) == 4


def test_a_diverging_sft_run_ends_in_one_line_exit_1_and_no_adapter(tmp_path, capsys):
    # 1e39 is a finite number (so it passes the checks) that overflows float32: every update makes the weights inf
    argv = ["sft", "--model", "tiny-random", "--device", "cpu", "--train-limit", "8", "--max-steps", "6", "--batch-size", "2",
            "--learning-rate", "1e39", "--max-skipped-updates", "1", "--output-dir", str(tmp_path)]
    code = cli.main(argv)
    [err] = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if "error:" in line]  # \r: after the progress bar
    assert code == 1
    assert err.startswith("nlu-workbook sft: error: SFT stopped at step 2: 2 update(s) made the LoRA weights NaN/inf")
    assert err.endswith("(--debug shows the traceback)")
    adapter = tmp_path / "adapters" / f"sft-{TASK}"
    assert not (adapter / "adapter_model.safetensors").exists() and not (adapter / "training.json").exists()


def test_ppo_trains_and_saves_where_notebook_04_looks(tmp_path, capsys):
    argv = ["ppo", "--model", "tiny-random", "--device", "cpu", "--preset", "smoke", "--train-limit", "8", "--ppo-steps", "1",
            "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "PPO on 1 process(es): model 'tiny-random', task 'movie-snippets', 8 rows, 4 prompts per step" in out
    printed = json.loads(out.strip().splitlines()[-1])
    assert printed["adapter"] == str(tmp_path / "adapters" / f"ppo-{TASK}") and printed["steps"] == 1
    assert (tmp_path / "adapters" / f"ppo-{TASK}" / "adapter_model.safetensors").is_file()
    assert cli.main([*argv, "--ppo-steps", "2"]) == 0  # the same command with more steps resumes from the checkpoint
    assert "PPO: resuming from" in capsys.readouterr().out
