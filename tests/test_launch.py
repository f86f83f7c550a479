"""The command-line entry points and what scaling out needs in PPO, one process at a time:
parameters from the command line, YAML files and profiles; the shipped accelerate configs;
per-prompt seeded sampling; whitening over the global batch; the ZeRO-3 code paths (with a
stand-in for DeepSpeed, which is not installed here). The two-process runs themselves are in
``tests/test_distributed.py``."""

import sys
import threading
import tomllib
import types
from pathlib import Path

import pytest
import torch
import yaml

from nlu_helpers import data, launch, models, ppo, sft

ROOT = Path(__file__).resolve().parents[1]
TASK = "movie-snippets"


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- accelerate configs


@pytest.mark.parametrize("name, kind, stage", [("single_gpu", "NO", None), ("multi_gpu", "MULTI_GPU", None),
                                               ("deepspeed_zero2", "DEEPSPEED", 2), ("deepspeed_zero3", "DEEPSPEED", 3)])
def test_shipped_accelerate_configs_load_in_accelerate(name, kind, stage):
    from accelerate.commands.config.config_args import load_config_from_file

    path = launch.accelerate_config(name)
    assert path == launch.accelerate_config(name.replace("_", "-") + ".yaml") and path.is_file()
    config = load_config_from_file(str(path))  # accelerate's own reader: unknown keys would fail here
    assert config.distributed_type.value == kind
    assert (config.deepspeed_config or {}).get("zero_stage") == stage
    if stage == 3:
        assert config.deepspeed_config["zero3_save_16bit_model"] is True  # the Trainer gathers weights to save
    raw = yaml.safe_load(path.read_text())
    assert raw["num_machines"] == 1 and raw["mixed_precision"] in ("no", "bf16")


def test_accelerate_configs_are_package_data_and_named_in_errors(capsys):
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["nlu_helpers"]
    assert "accelerate_configs/*.yaml" in package_data
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(r.startswith("deepspeed") for r in optional["dependencies"])  # an extra, never required
    assert optional["optional-dependencies"]["deepspeed"][0].startswith("deepspeed")
    with pytest.raises(ValueError, match="unknown accelerate config 'fsdp'; allowed: single_gpu, multi_gpu, deepspeed_zero2, deepspeed_zero3"):
        launch.accelerate_config("fsdp")
    launch._cli(["config", "multi_gpu"])
    assert capsys.readouterr().out.strip() == str(launch.accelerate_config("multi_gpu"))


# --------------------------------------------------------------------------- parameters


def test_sft_parameters_from_defaults_file_profile_and_command_line(tmp_path):
    values = launch.parse_args("sft", [])
    assert (values["model"], values["task"], values["preset"], values["output_dir"]) == ("embedded", TASK, "cpu-demo", "runs/cli")
    assert launch.sft_settings(values) == sft.CPU_DEMO

    config = tmp_path / "sft.yaml"
    config.write_text("model: tiny-random\nlearning_rate: 1e-2\nbatch-size: 8\ntarget_modules: [q_proj, k_proj]\npreset: paper\n")
    values = launch.parse_args("sft", ["--config", str(config), "--batch_size", "4", "--packing", "--max-steps", "null"])
    settings = launch.sft_settings(values)
    assert values["model"] == "tiny-random"
    assert settings == sft.PAPER.replace(learning_rate=1e-2, batch_size=4, target_modules=("q_proj", "k_proj"),
                                         packing=True, max_steps=None)  # 1e-2 is a number, not YAML 1.1's string

    # a workbook profile: its parameters and notebook 03's, without the notebook-only ones
    values = launch.parse_args("sft", ["--config", "colab-t4", "--max-steps", "5"])
    assert values["model"] == "Qwen/Qwen2.5-0.5B-Instruct" and values["train_limit"] == 4000
    assert launch.sft_settings(values) == sft.CPU_DEMO.replace(max_steps=5, batch_size=16, learning_rate=2e-4, load_in_4bit=True)
    assert "eval_batch_size" not in values and "n_bootstrap" not in values


def test_parameter_errors_name_the_bad_value_and_the_allowed_ones(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model: tiny-random\nlr: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown parameters \['lr'\]; allowed: .*'learning_rate'"):
        launch.parse_args("sft", ["--config", str(config)])
    with pytest.raises(FileNotFoundError, match="'nope.yaml' is neither a YAML file nor a shipped profile; profiles: .*smoke"):
        launch.parse_args("ppo", ["--config", "nope.yaml"])
    with pytest.raises(ValueError, match="unknown SFT preset 'smoke'; allowed: cpu-demo, paper"):
        launch.sft_settings(launch.parse_args("sft", ["--preset", "smoke"]))
    with pytest.raises(ValueError, match="unknown PPO preset 'fast'"):
        launch.ppo_config(launch.parse_args("ppo", ["--preset", "fast"]))
    with pytest.raises(ValueError, match="unknown entry point 'dpo'; allowed: sft, ppo"):
        launch.main("dpo", [])
    with pytest.raises(SystemExit):
        launch.parse_args("ppo", ["--no-such-option", "1"])


def test_ppo_parameters_as_notebook_04_names_them(tmp_path):
    values = launch.parse_args("ppo", ["--preset", "paper", "--learning-rate", "null", "--temperature", "0.7",
                                       "--max-new-tokens", "8", "--ppo-steps", "40"])
    assert launch.ppo_config(values) == ppo.preset("paper", temperature=0.7, max_new_tokens=(8, 8))  # null lr: the preset's
    assert values["ppo_steps"] == 40 and values["start_from"] == "base"
    # the smoke profile: 04's preset, steps and rows; its max_new_tokens is for evaluation there, not the rollout range
    values = launch.parse_args("ppo", ["--config", "smoke"])
    assert (values["preset"], values["ppo_steps"], values["train_limit"], values["model"]) == ("smoke", 3, 16, "tiny-random")
    assert launch.ppo_config(values) == ppo.SMOKE  # the profile adds seed 0, which SMOKE has
    assert launch.ppo_config(launch.parse_args("ppo", ["--max-new-tokens", "[4, 9]"])).max_new_tokens == (4, 9)

    assert launch.start_adapter_dir("base", tmp_path, TASK) is None
    with pytest.raises(ValueError, match="start_from='sft'.*sft-movie-snippets.*allowed: 'base', 'sft'"):
        launch.start_adapter_dir("sft", tmp_path, TASK)
    adapter = tmp_path / "adapters" / f"sft-{TASK}"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    assert launch.start_adapter_dir("sft", tmp_path, TASK) == adapter == launch.start_adapter_dir(str(adapter), "elsewhere", TASK)


def test_help_lists_notebook_parameters_and_settings_fields():
    text = launch.build_parser("ppo").format_help()
    for option in ("--config", "--start-from", "--ppo-steps", "--train-limit", "--learning-rate", "--kl-coef", "--weights-dump"):
        assert option in text, option
    text = launch.build_parser("sft").format_help()
    for option in ("--max-steps", "--load-in-4bit", "--overwrite", "--lora-r", "--gradient-checkpointing"):
        assert option in text, option


def test_dump_weights_writes_only_trainable_weights(tmp_path):
    from safetensors.torch import load_file

    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    module[0].requires_grad_(False)
    path = launch.dump_weights(module, tmp_path, rank=1)
    assert path == tmp_path / "rank-1.safetensors" and sorted(load_file(path)) == ["1.bias", "1.weight"]
    with pytest.raises(ValueError, match="no trainable weights"):
        launch.dump_weights(module[0], tmp_path, rank=0)


# --------------------------------------------------------------------------- PPO pieces for several processes


def test_gumbel_sampler_draws_from_the_softmax_at_the_temperature():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    temperature, n = 0.8, 6000
    sampler = ppo.SeededGumbelSampler(range(n), temperature)
    picks = sampler(None, logits.expand(n, -1)).argmax(-1)
    frequencies = torch.bincount(picks, minlength=4).double() / n
    expected = torch.softmax(logits.double() / temperature, -1)
    assert ((frequencies - expected).abs() <= 4 * (expected * (1 - expected) / n).sqrt()).all(), (frequencies, expected)
    # the same seed, the same draw; one seed per row is required
    again = ppo.SeededGumbelSampler(range(n), temperature)(None, logits.expand(n, -1)).argmax(-1)
    assert torch.equal(picks, again)
    with pytest.raises(ValueError, match="3 seeds for a batch of 2 rows"):
        ppo.SeededGumbelSampler([1, 2, 3], 1.0)(None, torch.zeros(2, 4))


def test_a_prompts_answer_depends_on_its_seed_only_not_on_its_batch():
    tokenizer = models.load_tokenizer(models.TINY_MODEL)
    policy = models.load_model(models.TINY_MODEL, device="cpu")
    rows = list(data.load_split(TASK, "train", limit=4))
    from nlu_helpers.tasks import get_task

    prompts = [get_task(TASK).build_prompt(r) for r in rows]
    seeds = ppo.sample_seeds(0, 5, range(4))
    assert len(set(seeds)) == 4 and seeds == ppo.sample_seeds(0, 5, range(4)) != ppo.sample_seeds(0, 6, range(4))

    def answers(indices):
        ids, _, mask, texts = ppo.sample_answers(policy, tokenizer, [prompts[i] for i in indices], max_new_tokens=6,
                                                 temperature=1.0, seeds=[seeds[i] for i in indices])
        response = ids[:, -mask.shape[1]:]
        return {i: response[k][mask[k].bool()].tolist() for k, i in enumerate(indices)}

    whole = answers([0, 1, 2, 3])  # one process with the global batch
    assert {**answers([2, 0]), **answers([3, 1])} == whole  # two processes, other padding, other order
    assert answers([1]) == {1: whole[1]}
    assert len({tuple(v) for v in whole.values()}) > 1  # it does sample: the answers differ
    other = ppo.sample_answers(policy, tokenizer, prompts[:1], max_new_tokens=6, temperature=1.0, seeds=[seeds[0] + 1])
    first = ppo.sample_answers(policy, tokenizer, prompts[:1], max_new_tokens=6, temperature=1.0, seeds=[seeds[0]])
    assert other[0].tolist() != first[0].tolist()  # another seed, another answer (the tiny model is close to uniform)


def test_whitening_over_processes_equals_whitening_the_global_batch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    mask = (torch.arange(5)[None, :] < torch.tensor([5, 2, 4, 1, 3, 5])[:, None]).double()
    expected = ppo.whiten(x, mask)
    slots: list = [None, None]
    barrier = threading.Barrier(2)

    def all_sum(rank):
        def reduce(tensor):  # what an all-reduce does, between two threads
            slots[rank] = tensor
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total
        return reduce

    results: list = [None, None]

    def worker(rank):
        rows = slice(0, 2) if rank == 0 else slice(2, 6)  # unequal shares, padding in both
        results[rank] = ppo.whiten(x[rows], mask[rows], all_sum=all_sum(rank))

    threads = [threading.Thread(target=worker, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    torch.testing.assert_close(torch.cat(results), expected)
    assert not torch.allclose(ppo.whiten(x[:2], mask[:2]), expected[:2])  # whitening each share alone differs


def _fake_deepspeed(monkeypatch, events):
    class GatheredParameters:
        def __init__(self, params, modifier_rank=None):
            self.count, self.modifier_rank = len(list(params)), modifier_rank

        def __enter__(self):
            events.append(("gather", self.count, self.modifier_rank))

        def __exit__(self, *exc):
            events.append(("release",))

    deepspeed = types.ModuleType("deepspeed")
    deepspeed.zero = types.SimpleNamespace(GatheredParameters=GatheredParameters)
    monkeypatch.setitem(sys.modules, "deepspeed", deepspeed)
    import trl.models.utils as trl_utils

    monkeypatch.setattr(trl_utils, "remove_hooks", lambda model: events.append(("remove_hooks", type(model).__name__)))
    monkeypatch.setattr(trl_utils, "add_hooks", lambda model: events.append(("add_hooks", type(model).__name__)))


def test_zero3_gathers_weights_for_generation_and_saving_and_nothing_else_does(monkeypatch, tmp_path):
    events: list = []
    _fake_deepspeed(monkeypatch, events)
    rows = list(data.load_split(TASK, "train", limit=8))
    config = ppo.preset("smoke", prompts_per_step=2, batch_size=1, gradient_accumulation_steps=2, max_new_tokens=(2, 3))
    trainer = ppo.PPOTrainer(models.TINY_MODEL, TASK, rows, config, device="cpu")
    every = len(list(trainer.model.parameters()))
    trained = len([p for p in trainer.ac.parameters() if p.requires_grad])

    def plugin(stage):
        return types.SimpleNamespace(state=types.SimpleNamespace(deepspeed_plugin=types.SimpleNamespace(zero_stage=stage)))

    assert (ppo.zero_stage(trainer.accelerator), ppo.zero_stage(plugin(2)), ppo.zero_stage(plugin(3)), ppo.zero_stage(None)) == (None, 2, 3, None)
    for accelerator in (trainer.accelerator, plugin(2), None):  # no DeepSpeed, ZeRO-2: whole weights already
        with ppo.gathered_for_generation(trainer.model, accelerator), ppo.gathered_parameters(accelerator, trainer.model.parameters()):
            pass
    assert events == []

    plain_sample = ppo.sample_answers
    monkeypatch.setattr(ppo, "sample_answers", lambda *a, **k: (events.append(("generate",)), plain_sample(*a, **k))[1])
    monkeypatch.setattr(ppo, "zero_stage", lambda accelerator: 3)
    rollout = trainer.rollout()
    assert events == [("gather", every, None), ("remove_hooks", "ActorCritic"), ("generate",), ("add_hooks", "ActorCritic"), ("release",)]
    assert rollout.advantages is not None
    events.clear()
    trainer.save_adapter(tmp_path / "adapter")
    assert events == [("gather", trained, None), ("release",)]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    events.clear()
    with pytest.warns(UserWarning, match="DeepSpeed shards the optimizer state"):
        trainer.save_checkpoint(tmp_path / "checkpoint")
    assert events == [("gather", trained, None), ("release",)] and not (tmp_path / "checkpoint" / "optimizer.pt").exists()
    events.clear()
    trainer.load_checkpoint(tmp_path / "checkpoint")
    assert events == [("gather", trained, 0), ("release",)]  # loaded into whole weights, sharded out from rank 0
