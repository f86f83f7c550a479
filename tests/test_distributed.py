"""Data-parallel training for real: two processes under ``accelerate launch`` on CPU (gloo).

For a few SFT steps and a few PPO steps on the tiny model, through the command-line entry
points (``python -m nlu_helpers.sft`` / ``.ppo``):

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
and the prompt's place in the global batch, ``ppo.SeededGumbelSampler``), so a prompt gets
the same answer whichever process draws it. The updates are then the same computation, so
the comparison can be tight.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nlu_helpers import launch, ppo

ROOT = Path(__file__).resolve().parents[1]
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(module: str, args: list[str], processes: int = 2) -> str:
    """``accelerate launch`` with ``processes`` CPU processes; returns what they printed."""
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch"] if accelerate.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]
    command += ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", module, *args]
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
    output = _launch("nlu_helpers.sft", [*SFT_ARGS, "--batch-size", "2", "--output-dir", str(tmp_path / "two"),
                                         "--weights-dump", str(tmp_path / "two" / "dump")])
    assert '"steps": 3' in output
    launch.main("sft", [*SFT_ARGS, "--batch-size", "4", "--output-dir", str(tmp_path / "one"),
                        "--weights-dump", str(tmp_path / "one" / "dump")])
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
    first = _launch("nlu_helpers.ppo", [*common, "--ppo-steps", "1"])
    assert "resuming" not in first
    assert {p.name for p in (two / "checkpoints" / "ppo-movie-snippets").glob("rng-*.pt")} == {"rng-0.pt", "rng-1.pt"}
    second = _launch("nlu_helpers.ppo", [*common, "--ppo-steps", "2", "--weights-dump", str(two / "dump")])
    assert "resuming from" in second and "(step 1)" in second

    trainer = launch.main("ppo", [*PPO_ARGS, "--prompts-per-step", "4", "--gradient-accumulation-steps", "4", "--ppo-steps", "2",
                                  "--output-dir", str(tmp_path / "one"), "--weights-dump", str(tmp_path / "one" / "dump")])
    ranks = _dumps(two / "dump")
    single = load_file(tmp_path / "one" / "dump" / "rank-0.safetensors")
    fresh = ppo.build_policy("tiny-random", trainer.config, device="cpu")  # the same seeded start, untrained
    before = {name: p.detach() for name, p in fresh.named_parameters() if p.requires_grad}
    _assert_same_weights(ranks, single, before)

    # logged statistics are over the global batch: the same numbers as one process holding it all
    state = json.loads((two / "checkpoints" / "ppo-movie-snippets" / "state.json").read_text())
    assert state["step_count"] == 2 and state["num_processes"] == 2
    logged = [json.loads(line) for line in (two / "checkpoints" / "ppo-movie-snippets" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2]
    for distributed, alone in zip(logged, trainer.history):
        for key in ("reward", "accuracy", "unparseable", "kl", "response_length", "kl_coef", "max_new_tokens", "early_stopped"):
            assert distributed[key] == pytest.approx(alone[key], abs=1e-5), key
        assert distributed["early_stopped"] == 1
    assert (two / "adapters" / "ppo-movie-snippets" / "adapter_model.safetensors").is_file()
    print(f"distributed PPO test: {time.perf_counter() - started:.1f} s")
