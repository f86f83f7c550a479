"""PPO checkpoints: no code runs from them, damage is named with a remedy, and a kill at any instant leaves one to resume."""

import hashlib
import json
import os
import pickle
import shutil

import pytest
from nlu_helpers import checkpoints, data, models, ppo

TASK = "movie-snippets"
CONFIG = ppo.preset("smoke", prompts_per_step=4, batch_size=2, gradient_accumulation_steps=2, ppo_epochs=1, max_new_tokens=(3, 5))


@pytest.fixture(scope="module")
def rows():
    return list(data.load_split(TASK, "train", limit=12))


@pytest.fixture()
def saved(rows, tmp_path):
    trainer = ppo.PPOTrainer(models.TINY_MODEL, TASK, rows, CONFIG, device="cpu")
    trainer.train(1, progress=False, checkpoint_dir=tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _fresh(rows):
    return ppo.PPOTrainer(models.TINY_MODEL, TASK, rows, CONFIG, device="cpu")


def _rewrite_manifest(folder):
    """What an attacker who can write the folder would also do: make state.json agree with the altered files."""
    state = json.loads((folder / "state.json").read_text())
    state["files"] = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in state["files"]}
    (folder / "state.json").write_text(json.dumps(state))


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling this runs os.system-like code: it must never happen
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("victim", ["random_states_0.pkl", "optimizer.bin"])
def test_a_crafted_checkpoint_file_does_not_run_its_payload(rows, saved, tmp_path, victim):
    marker = tmp_path / "pwned"
    with open(saved / victim, "wb") as handle:
        pickle.dump({"step": 1, "x": Payload(marker)}, handle)
    _rewrite_manifest(saved)
    with pytest.raises(checkpoints.CheckpointError, match=f"{victim}|could not be loaded"):
        _fresh(rows).load_checkpoint(saved)
    assert not marker.exists()


def test_damaged_or_missing_files_are_named_with_the_remedy(rows, saved, tmp_path):
    truncated, missing, broken = (tmp_path / name for name in ("truncated", "missing", "broken"))
    for copy in (truncated, missing, broken):
        shutil.copytree(saved, copy)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # as a full disk or a kill during a copy leaves it
    with pytest.raises(checkpoints.CheckpointError, match=r"model\.safetensors is damaged.*delete the folder .*--restart"):
        _fresh(rows).load_checkpoint(truncated)
    (missing / "optimizer.bin").unlink()  # the old code resumed silently with a fresh optimizer
    with pytest.raises(checkpoints.CheckpointError, match=r"optimizer\.bin is missing"):
        _fresh(rows).load_checkpoint(missing)
    (broken / "state.json").write_text("{not json")
    with pytest.raises(checkpoints.CheckpointError, match=r"state\.json is damaged"):
        _fresh(rows).load_checkpoint(broken)


def test_a_kill_between_the_two_renames_leaves_a_checkpoint_that_resumes(rows, saved, tmp_path):
    os.replace(saved, saved.with_name("ckpt.old"))  # the instant between "old out of the way" and "new into place"
    assert checkpoints.find(saved) == saved and not saved.with_name("ckpt.old").exists()
    trainer = ppo.train_ppo(models.TINY_MODEL, TASK, rows, CONFIG, steps=2, output_dir=tmp_path / "run", progress=False, device="cpu")
    assert trainer.step_count == 2  # (a fresh run: its own folder)
    (tmp_path / "run" / "checkpoints").mkdir(exist_ok=True)
    os.replace(saved, tmp_path / "run" / "checkpoints" / f"ppo-{TASK}.old")
    os.replace(tmp_path / "run" / "checkpoints" / f"ppo-{TASK}", tmp_path / "elsewhere")
    resumed = ppo.train_ppo(models.TINY_MODEL, TASK, rows, CONFIG, steps=2, output_dir=tmp_path / "run", progress=False, device="cpu")
    assert [r["step"] for r in resumed.history] == [1, 2]  # step 1 from the .old checkpoint, then one more


def test_a_checkpoint_holds_no_pickled_code_and_only_trained_weights(saved):
    from safetensors import safe_open

    with safe_open(str(saved / "model.safetensors"), "pt") as handle:
        names = list(handle.keys())
    assert names and all("lora_" in n or "value_head" in n for n in names)
    from accelerate.utils import load  # torch.load(weights_only=True) with numpy's RNG state types allowed

    for name in ("optimizer.bin", "random_states_0.pkl"):
        load(saved / name)  # plain tensors and containers: the safe unpickler reads them


def test_an_unwritable_output_folder_fails_before_training(rows, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OSError, match="cannot write to .*file.*choose another output folder"):
        ppo.train_ppo(models.TINY_MODEL, TASK, rows, CONFIG, steps=1, output_dir=a_file, progress=False, device="cpu")
