"""Data-parallel training for real: two processes under ``accelerate launch`` on CPU (gloo).

For a few SFT steps and a few PPO steps on the tiny model, through the one command line
(``accelerate launch -m nlu_helpers sft`` / ``ppo``):

- both processes end with bit-identical trained weights (each dumps its own copy);
- those weights equal a one-process run with the same global batch (up to float rounding),
  while training moved them far more than that tolerance;
- PPO: the second launch resumes the first one's two-process checkpoint, and the logged
  reward/KL (averaged over processes) equal the one-process run's.

``accelerate launch --cpu`` starts a single process (more need MPI), so the processes are
started by the torchrun launcher (``--multi_gpu``) and kept on the CPU with
``ACCELERATE_USE_CPU=true`` plus ``--device cpu``: accelerate then sets up MULTI_CPU with gloo.

Randomness is arranged, not tolerated: LoRA dropout is 0 in the SFT runs (dropout masks are
per-process noise), and PPO samples every prompt from its own seed (the run seed, the step
and the prompt's place in the global batch, ``generation.SeededGumbelSampler``), so a prompt gets
the same answer whichever process draws it. The updates are then the same computation, so
the comparison can be tight. The pieces that make this so are checked first, in one process:
per-prompt seeded sampling, whitening over the global batch, and the ZeRO-3 gathering paths
(with a stand-in for DeepSpeed, which is not installed here).
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nlu_helpers import checkpoints, cli, data, distributed, generation, models, ppo
from nlu_helpers.arguments import parse
from nlu_helpers.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
TASK = "movie-snippets"
TOLERANCE = 1e-5  # float rounding: summation order differs between one and two processes

SFT_ARGS = ["--model", "tiny-random", "--device", "cpu", "--train-limit", "16", "--max-steps", "3",
            "--learning-rate", "1e-2", "--lora-dropout", "0", "--save-steps", "2"]
# per process: 2 prompts as 2 mini-batches of 1; one process with the same global batch: 4 as 4 x 1.
# With mini-batches of one sequence the mean over mini-batches is the mean over sequences, whichever
# process holds them, so the two updates are the same sum.
# A third PPO epoch that the KL guard cuts (approx. KL ~1e-3 after the second): the processes must agree on it.
PPO_ARGS = ["--model", "tiny-random", "--device", "cpu", "--preset", "smoke", "--train-limit", "16",
            "--batch-size", "1", "--max-new-tokens", "[3, 5]", "--ppo-epochs", "3", "--target-kl", "1e-5"]


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- the pieces, in one process


def test_a_prompts_answer_depends_on_its_seed_only_not_on_its_batch():
    tokenizer = models.load_tokenizer(models.TINY_MODEL)
    policy = models.load_model(models.TINY_MODEL, device="cpu")
    prompts = [get_task(TASK).build_prompt(r) for r in data.load_split(TASK, "train", limit=4)]
    seeds = generation.sample_seeds(0, 5, range(4))
    assert len(set(seeds)) == 4 and seeds == generation.sample_seeds(0, 5, range(4)) != generation.sample_seeds(0, 6, range(4))

    def answers(indices, seed_of=lambda i: seeds[i]):
        out = generation.generate(policy, tokenizer, [prompts[i] for i in indices], max_new_tokens=6, temperature=1.0,
                                  seeds=[seed_of(i) for i in indices])
        return {i: out.response_ids[k][out.response_mask[k].bool()].tolist() for k, i in enumerate(indices)}

    whole = answers([0, 1, 2, 3])  # one process with the global batch
    assert {**answers([2, 0]), **answers([3, 1])} == whole  # two processes, other padding, other order
    assert answers([1]) == {1: whole[1]}
    assert len({tuple(v) for v in whole.values()}) > 1  # it does sample: the answers differ
    assert answers([0], seed_of=lambda i: seeds[i] + 1) != {0: whole[0]}  # another seed, another answer


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
    every = len(list(trainer.ac.parameters()))
    trained = len([p for p in trainer.ac.parameters() if p.requires_grad])

    def plugin(stage):
        return types.SimpleNamespace(state=types.SimpleNamespace(deepspeed_plugin=types.SimpleNamespace(zero_stage=stage)))

    zero_stage = distributed.zero_stage
    assert (zero_stage(trainer.accelerator), zero_stage(plugin(2)), zero_stage(plugin(3)), zero_stage(None)) == (None, 2, 3, None)
    for accelerator in (trainer.accelerator, plugin(2), None):  # no DeepSpeed, ZeRO-2: whole weights already
        with distributed.gathered_for_generation(trainer.ac, accelerator), distributed.gathered_parameters(accelerator, trainer.ac.parameters()):
            pass
    assert events == []

    monkeypatch.setattr(distributed, "zero_stage", lambda accelerator: 3)
    with distributed.gathered_for_generation(trainer.ac, trainer.accelerator):
        events.append(("generate",))
    assert events == [("gather", every, None), ("remove_hooks", "ActorCritic"), ("generate",), ("add_hooks", "ActorCritic"), ("release",)]
    events.clear()
    trainer.save_adapter(tmp_path / "adapter")
    assert events == [("gather", trained, None), ("release",)]  # the trained weights only, whole to save
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


# --------------------------------------------------------------------------- two processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(subcommand: str, args: list[str], processes: int = 2) -> str:
    """``accelerate launch -m nlu_helpers <subcommand>`` with ``processes`` CPU processes; returns what they printed."""
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch"] if accelerate.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]
    command += ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "nlu_helpers", subcommand, *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert f"on {processes} process(es)" in output, output[-2000:]
    return output


def _dumps(folder: Path) -> list[dict[str, torch.Tensor]]:
    return [load_file(folder / f"rank-{rank}.safetensors") for rank in (0, 1)]


def _assert_same_weights(ranks: list[dict], single: dict, before: dict) -> float:
    """Ranks bit-identical, equal to the single-process run; returns how far training moved the weights."""
    zero, one = ranks
    assert sorted(zero) == sorted(one) == sorted(single) and zero
    for name in zero:
        assert torch.equal(zero[name], one[name]), f"the processes disagree on {name}"
        torch.testing.assert_close(zero[name], single[name], atol=TOLERANCE, rtol=0, msg=lambda m: f"{name}: {m}")
    moved = max(float((single[name] - before[name]).abs().max()) for name in single)
    assert moved > 100 * TOLERANCE, f"training barely moved the weights ({moved:.2e}): the comparison would prove nothing"
    return moved


def test_two_process_sft_equals_one_process_with_the_same_global_batch(tmp_path):
    started = time.perf_counter()
    output = _launch("sft", [*SFT_ARGS, "--batch-size", "2", "--output-dir", str(tmp_path / "two"),
                                         "--weights-dump", str(tmp_path / "two" / "dump")])
    assert '"steps": 3' in output
    cli.run_sft(parse("sft", [*SFT_ARGS, "--batch-size", "4", "--output-dir", str(tmp_path / "one"),
                              "--weights-dump", str(tmp_path / "one" / "dump")]))
    ranks = _dumps(tmp_path / "two" / "dump")
    single = load_file(tmp_path / "one" / "dump" / "rank-0.safetensors")
    before = {name: torch.zeros_like(t) if "lora_B" in name else t for name, t in single.items()}  # B starts at 0
    _assert_same_weights(ranks, single, before)

    # the folder the main process wrote holds the trained adapter, complete, and no leftovers
    adapter = tmp_path / "two" / "adapters" / "sft-movie-snippets"
    info = json.loads((adapter / "training.json").read_text())
    assert info["steps"] == 3 and not (adapter / "checkpoints").exists()
    saved = load_file(adapter / "adapter_model.safetensors")
    for name, tensor in ranks[0].items():
        torch.testing.assert_close(saved[name.replace(".default.", ".")], tensor, atol=0, rtol=0)
    print(f"distributed SFT test: {time.perf_counter() - started:.1f} s")


def test_two_process_ppo_resumes_and_equals_one_process_with_the_same_global_batch(tmp_path):
    started = time.perf_counter()
    two = tmp_path / "two"
    common = [*PPO_ARGS, "--prompts-per-step", "2", "--gradient-accumulation-steps", "2", "--output-dir", str(two)]
    first = _launch("ppo", [*common, "--ppo-steps", "1"])
    assert "resuming" not in first
    state = checkpoints.verify(two / "checkpoints" / "ppo-movie-snippets")
    assert {f for f in state["files"] if f.startswith("random_states_")} == {"random_states_0.pkl", "random_states_1.pkl"}
    second = _launch("ppo", [*common, "--ppo-steps", "2", "--weights-dump", str(two / "dump")])
    assert "resuming from" in second and "(step 1)" in second

    trainer = cli.run_ppo(parse("ppo", [*PPO_ARGS, "--prompts-per-step", "4", "--gradient-accumulation-steps", "4", "--ppo-steps", "2",
                                        "--output-dir", str(tmp_path / "one"), "--weights-dump", str(tmp_path / "one" / "dump")]))
    ranks = _dumps(two / "dump")
    single = load_file(tmp_path / "one" / "dump" / "rank-0.safetensors")
    fresh = ppo.build_policy("tiny-random", trainer.config, device="cpu")  # the same seeded start, untrained
    before = {name: p.detach() for name, p in fresh.named_parameters() if p.requires_grad}
    _assert_same_weights(ranks, single, before)

    # logged statistics are over the global batch: the same numbers as one process holding it all
    state = checkpoints.verify(two / "checkpoints" / "ppo-movie-snippets")
    assert state["step_count"] == 2 and state["num_processes"] == 2
    logged = state["history"]
    assert [r["step"] for r in logged] == [1, 2]
    for by_two, alone in zip(logged, trainer.history):
        for key in ("reward", "accuracy", "unparseable", "kl", "response_length", "kl_coef", "max_new_tokens", "early_stopped"):
            assert by_two[key] == pytest.approx(alone[key], abs=1e-5), key
        assert by_two["early_stopped"] == 1
    assert (two / "adapters" / "ppo-movie-snippets" / "adapter_model.safetensors").is_file()
    print(f"distributed PPO test: {time.perf_counter() - started:.1f} s")
