"""LoRA SFT on the tiny model: the data the trainer sees, the multi-task mix, saving and
reloading, clear errors, and resuming after a kill -9 to the very same adapter."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from nlu_helpers import data, models, sft
from nlu_helpers.samples import SAMPLE_ROWS
from nlu_helpers.tasks import OFFLINE_TASK, get_task

ROOT = Path(__file__).resolve().parents[1]
# A large learning rate so two steps visibly move the tiny model.
QUICK = sft.SFTSettings(learning_rate=1e-2, batch_size=2, max_steps=2, save_steps=2, max_length=256)


@pytest.fixture(scope="module")
def rows():
    return list(data.load_split(OFFLINE_TASK, "train", limit=8))


def _adapter(folder):
    return load_file(Path(folder) / "adapter_model.safetensors")


# --------------------------------------------------------------------------- data


def test_examples_are_the_task_prompt_and_its_target():
    sst2 = get_task("sst2")
    [example] = sft.sft_examples("sst2", [SAMPLE_ROWS["sst2"]])
    assert example["prompt"] == sst2.build_prompt(SAMPLE_ROWS["sst2"]) and example["prompt"].endswith("<Judgement>")
    assert example["completion"] == " Negative </Judgement>"
    assert (example["task"], example["source_index"]) == ("sst2", 0)

    [stsb] = sft.sft_examples("stsb", [SAMPLE_ROWS["stsb"] | {"label": 3.24}])
    assert stsb["completion"] == " 3.2 </Judgement>"  # STS-B answers with a number

    record = sft.sft_examples("record", [SAMPLE_ROWS["record"]])  # one yes/no example per candidate entity
    assert [e["completion"] for e in record] == [" Yes </Judgement>", " No </Judgement>"]
    assert "Statement: Most of the 40 women in Mariam's prison" in record[1]["prompt"]
    assert {e["source_index"] for e in record} == {0}


def test_mix_tasks_repeats_small_tasks_up_to_the_target_size():
    small = [{"sentence": f"small {i}", "label": i % 2} for i in range(7)]
    medium = [{"sentence": f"medium {i}", "label": i % 2} for i in range(20)]
    large = [{"sentence1": f"a {i}", "sentence2": "b", "label": i % 2} for i in range(60)]
    mixed = sft.mix_tasks({"sst2": small, "cola": medium, "rte": large}, target_size=50, seed=1)

    assert Counter(e["task"] for e in mixed) == {"sst2": 50, "cola": 50, "rte": 60}  # large tasks stay whole
    copies = Counter((e["task"], e["source_index"]) for e in mixed)
    assert sorted(set(copies[("sst2", i)] for i in range(7))) == [7, 8]  # 50 = 7 * 7 + 1: balanced repeats
    assert sum(copies[("sst2", i)] for i in range(7)) == 50
    assert sorted(set(copies[("cola", i)] for i in range(20))) == [2, 3]
    assert all(copies[("rte", i)] == 1 for i in range(60))
    assert [e["task"] for e in mixed[:20]] != ["sst2"] * 20  # shuffled, not task after task
    assert mixed == sft.mix_tasks({"sst2": small, "cola": medium, "rte": large}, target_size=50, seed=1)
    assert mixed != sft.mix_tasks({"sst2": small, "cola": medium, "rte": large}, target_size=50, seed=2)
    mixed[0]["prompt"] = "changed"  # copies, not shared dicts
    assert sum(e["prompt"] == "changed" for e in mixed) == 1


def test_mix_tasks_rejects_bad_input():
    with pytest.raises(ValueError, match="target_size must be a positive number of rows, got 0"):
        sft.mix_tasks({"sst2": [SAMPLE_ROWS["sst2"]]}, target_size=0)
    with pytest.raises(ValueError, match="task 'rte' has no rows"):
        sft.mix_tasks({"sst2": [SAMPLE_ROWS["sst2"]], "rte": []}, target_size=10)
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        sft.mix_tasks({"nope": [SAMPLE_ROWS["sst2"]]}, target_size=10)


def test_settings_presets_and_validation():
    assert (sft.PAPER.learning_rate, sft.PAPER.batch_size, sft.PAPER.epochs, sft.PAPER.max_steps) == (9e-6, 24, 1.0, None)
    assert (sft.PAPER.packing, sft.PAPER.max_length, sft.PAPER.precision) == (True, 1024, "bf16")
    assert (sft.CPU_DEMO.learning_rate, sft.CPU_DEMO.batch_size, sft.CPU_DEMO.max_steps) == (2e-4, 16, 30)
    for preset in (sft.PAPER, sft.CPU_DEMO):
        assert (preset.lora_r, preset.lora_alpha, preset.lora_dropout, preset.lora_bias) == (16, 32, 0.05, "none")
    assert sft.CPU_DEMO.replace(max_steps=3).max_steps == 3
    assert json.loads(json.dumps(sft.SFTSettings(lora_target_modules=["q_proj"]).to_dict()))["lora_target_modules"] == ["q_proj"]
    with pytest.raises(ValueError, match="SFT setting 'target_modules' is now called 'lora_target_modules'"):
        sft.CPU_DEMO.replace(target_modules="all-linear")  # PPOConfig's name: one name for one thing
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="learning_rate must be a (positive|finite) number"):
            sft.SFTSettings(learning_rate=bad)
    with pytest.raises(ValueError, match="max_skipped_updates must be an integer >= 0, got -1"):
        sft.SFTSettings(max_skipped_updates=-1)
    with pytest.raises(ValueError, match="learning_rate must be a positive number, got -1"):
        sft.SFTSettings(learning_rate=-1)
    with pytest.raises(ValueError, match="precision 'fp8' is not one of auto, bf16, fp16, fp32"):
        sft.SFTSettings(precision="fp8")
    with pytest.raises(ValueError, match=r"unknown SFT setting\(s\) \['lr'\]"):
        sft.CPU_DEMO.replace(lr=1e-3)
    with pytest.warns(UserWarning, match="no longer gives the base model back"):
        sft.SFTSettings(lora_bias="all")


def test_loss_is_on_the_completion_and_its_eos_only(rows, tokenizer, tmp_path):
    examples = [e | {"completion": e["completion"] + tokenizer.eos_token} for e in sft.sft_examples(OFFLINE_TASK, rows[:2])]
    trainer = sft.make_trainer(QUICK, model=models.TINY_MODEL, examples=examples, output_dir=tmp_path,
                               tokenizer=tokenizer, progress=False)
    prepared = trainer.train_dataset[0]
    ids, in_loss = sft.tokenize_example(tokenizer, examples[0])
    assert prepared["input_ids"] == ids  # what a notebook shows is what TRL trains on
    assert [label != -100 for label in prepared["labels"]] == in_loss
    trained = [token for token, used in zip(ids, in_loss) if used]
    answer = " Positive" if rows[0]["label"] == 1 else " Negative"
    assert tokenizer.decode(trained) == f"{answer} </Judgement><|im_end|>"
    assert trained[-1] == tokenizer.eos_token_id
    trainable, total = models.trainable_parameters(trainer.model)
    assert 0 < trainable < total / 100  # LoRA trains a sliver of the model


def test_warmup_ratio_is_a_fraction_of_the_steps(rows, tokenizer, tmp_path):
    """transformers 5 has no ``warmup_ratio``: ``warmup_steps`` below 1 is the fraction, so the ratio goes there."""
    examples = [e | {"completion": e["completion"] + tokenizer.eos_token} for e in sft.sft_examples(OFFLINE_TASK, rows[:2])]
    settings = QUICK.replace(max_steps=8, warmup_ratio=0.25, lr_scheduler="constant_with_warmup")
    trainer = sft.make_trainer(settings, model=models.TINY_MODEL, examples=examples, output_dir=tmp_path,
                               tokenizer=tokenizer, progress=False)
    assert trainer.args.get_warmup_steps(8) == 2  # 25% of 8 steps
    trainer.create_optimizer_and_scheduler(num_training_steps=8)
    rates = []
    for _ in range(4):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert rates == pytest.approx([0.0, 0.5e-2, 1e-2, 1e-2])  # linear up over 2 steps, then the full rate


# --------------------------------------------------------------------------- errors


def test_clear_errors_before_any_training(rows, tmp_path):
    with pytest.raises(ValueError, match="no training rows for task 'movie-snippets'"):
        sft.train_sft(QUICK, model=models.TINY_MODEL, train_rows=[], task=OFFLINE_TASK, output_dir=tmp_path / "a")
    with pytest.raises(ValueError, match=r"training example 3 \(task 'movie-snippets', row 3\) is \d+ tokens .* max_length=200"):
        long = rows[:3] + [{"sentence": "word " * 200, "label": 1}]
        sft.train_sft(QUICK.replace(max_length=200), model=models.TINY_MODEL, train_rows=long, task=OFFLINE_TASK,
                      output_dir=tmp_path / "b")
    with pytest.raises(ValueError, match=r"train_rows\[0\] has no 'prompt'/'completion'"):
        sft.train_sft(QUICK, model=models.TINY_MODEL, train_rows=rows, output_dir=tmp_path / "c")
    with pytest.raises(TypeError, match="model must be a model name or folder"):
        sft.train_sft(QUICK, model=object(), train_rows=rows, task=OFFLINE_TASK, output_dir=tmp_path / "d")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and holds no SFT run"):
        sft.train_sft(QUICK, model=models.TINY_MODEL, train_rows=rows, task=OFFLINE_TASK, output_dir=tmp_path / "e")
    assert not any((tmp_path / p).exists() for p in "abcd")


def test_4bit_needs_cuda(rows, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the 4-bit path itself is exercised on GPU runs, not here")
    with pytest.raises(RuntimeError, match="load_in_4bit=True needs a CUDA GPU"):
        sft.train_sft(QUICK.replace(load_in_4bit=True), model=models.TINY_MODEL, train_rows=rows, task=OFFLINE_TASK,
                      output_dir=tmp_path)


# --------------------------------------------------------------------------- training


class RecordingPlot:
    def __init__(self):
        self.points = []

    def update(self, step, values, *, force=False):
        self.points += [(step, values["loss"])] if "loss" in values else []


def test_multi_task_training_saves_an_adapter_that_reloads_on_its_base_only(rows, tokenizer, tmp_path):
    mixed = sft.mix_tasks({OFFLINE_TASK: rows[:4], "stsb": [SAMPLE_ROWS["stsb"]]}, target_size=4, seed=0)
    plot = RecordingPlot()
    out = sft.train_sft(QUICK, model=models.TINY_MODEL, train_rows=mixed, output_dir=tmp_path / "sft",
                        callbacks=[sft.LivePlotCallback(plot)], progress=False)

    info = json.loads((out / "training.json").read_text())
    assert info["model"] == models.TINY_MODEL and info["tasks"] == [OFFLINE_TASK, "stsb"]
    assert info["steps"] == 2 and info["n_examples"] == 8 and info["settings"]["learning_rate"] == 1e-2
    assert [step for step, _ in info["losses"]] == [1, 2] and info["final_loss"] == info["losses"][-1][1]
    assert {"torch", "transformers", "peft", "trl"} <= set(info["versions"])
    assert info["lora"] == {"r": 16, "alpha": 32, "dropout": 0.05, "bias": "none", "use_rslora": True,
                            "target_modules": ["q_proj", "v_proj"]}
    assert plot.points == [tuple(p) for p in info["losses"]]
    assert not (out / sft.CHECKPOINTS).exists()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == models.TINY_MODEL

    tuned, saved_tokenizer = sft.load_trained(out, device="cpu")
    base = models.load_model(models.TINY_MODEL, device="cpu")
    ids = tokenizer(mixed[0]["prompt"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert not torch.allclose(tuned(ids).logits, base(ids).logits)
    assert saved_tokenizer.padding_side == "left" and saved_tokenizer.eos_token == tokenizer.eos_token
    with pytest.raises(ValueError, match="trained on base model 'tiny-random', but the base model asked for is 'embedded'"):
        models.load_model(models.EMBEDDED_MODEL, adapter=out)

    # the same call again finds the finished adapter; other settings in the same folder are refused
    assert sft.train_sft(QUICK, model=models.TINY_MODEL, train_rows=mixed, output_dir=out) == out
    with pytest.raises(ValueError, match="learning_rate: 0.01 there, 0.001 now"):
        sft.train_sft(QUICK.replace(learning_rate=1e-3), model=models.TINY_MODEL, train_rows=mixed, output_dir=out)
    with pytest.raises(ValueError, match="holds an adapter trained on base model 'tiny-random', but model='embedded'"):
        sft.train_sft(QUICK, model=models.EMBEDDED_MODEL, train_rows=mixed, output_dir=out)

    merged = sft.merge_adapter(out, tmp_path / "merged")
    plain = models.load_model(merged, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, tuned(ids).logits, rtol=1e-4, atol=1e-4)


def test_packing_trains_with_examples_kept_apart(rows, tokenizer, tmp_path):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    out = sft.train_sft(QUICK.replace(packing=True, max_steps=1), model=models.TINY_MODEL, train_rows=rows[:4],
                        task=OFFLINE_TASK, output_dir=tmp_path, progress=False)
    assert json.loads((out / "training.json").read_text())["steps"] == 1
    # the collator packs without padding; the model must not let one example attend to another
    a, b = (tokenizer(text)["input_ids"] for text in ("a gorgeous film", "dull, dull, dull and long"))
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(
        [{"input_ids": a + b, "seq_lengths": [len(a), len(b)]}]
    )
    model = models.load_model(models.TINY_MODEL, device="cpu")
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([ids])).logits[0] for ids in (a, b)])
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)


class Blowup(TrainerCallback):
    """Makes one gradient NaN just before the optimizer step of ``step``, as an overflowing backward pass would."""

    def __init__(self, step):
        self.step = step

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            next(p for n, p in model.named_parameters() if "lora_B" in n).grad.fill_(float("nan"))


def test_a_non_finite_update_is_rolled_back_and_counted(rows, tmp_path):
    settings = QUICK.replace(max_steps=3, save_steps=10)
    out = sft.train_sft(settings, model=models.TINY_MODEL, train_rows=rows[:6], task=OFFLINE_TASK, output_dir=tmp_path / "guarded",
                        callbacks=[Blowup(step=2)], progress=False)
    info = json.loads((out / "training.json").read_text())
    assert info["steps"] == 3 and info["skipped_updates"] == 1
    adapter = _adapter(out)
    assert all(torch.isfinite(t).all() for t in adapter.values())
    assert any(t.abs().max() > 0 for name, t in adapter.items() if "lora_B" in name)  # steps 1 and 3 trained


def test_a_diverging_run_stops_with_a_clear_error_and_saves_no_adapter(rows, tmp_path):
    # 1e39 is a finite float64 but overflows float32: the first update makes the weights inf, and every later one too
    settings = QUICK.replace(learning_rate=1e39, max_steps=8, save_steps=2, max_skipped_updates=2)
    with pytest.raises(sft.NonFiniteWeights, match=r"SFT stopped at step 3: 3 update\(s\) made the LoRA weights NaN/inf "
                                                   r"\(max_skipped_updates=2, each rolled back\) and no adapter was saved"):
        sft.train_sft(settings, model=models.TINY_MODEL, train_rows=rows, task=OFFLINE_TASK, output_dir=tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan" / "adapter_model.safetensors").exists() and not (tmp_path / "nan" / "training.json").exists()
    for checkpoint in (tmp_path / "nan" / "checkpoints").glob("checkpoint-*"):  # what was saved on the way holds good weights
        assert all(torch.isfinite(t).all() for t in _adapter(checkpoint).values())


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from transformers import TrainerCallback
    from nlu_helpers import data, sft

    class KillNine(TrainerCallback):  # the harshest interruption: no cleanup, no final save
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)

    settings = sft.SFTSettings(**{settings!r})
    rows = list(data.load_split("movie-snippets", "train", limit=8))
    sft.train_sft(settings, model="tiny-random", train_rows=rows, task="movie-snippets", output_dir=sys.argv[1],
                  callbacks=[KillNine()], progress=False)
    """
)


def test_resume_after_kill_9_ends_with_the_same_adapter(rows, tmp_path):
    settings = sft.SFTSettings(learning_rate=1e-2, batch_size=2, max_steps=4, save_steps=2, max_length=256)
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(settings=settings.to_dict()))
    killed = tmp_path / "killed"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.run([sys.executable, str(script), str(killed), "3"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert (killed / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (killed / "training.json").exists()
    half = killed / "checkpoints" / "checkpoint-4"  # as if the kill had hit the writing of the next checkpoint
    half.mkdir()
    (half / "adapter_config.json").write_text("{")

    resumed = sft.train_sft(settings, model=models.TINY_MODEL, train_rows=rows, task=OFFLINE_TASK, output_dir=killed,
                            progress=False)
    straight = sft.train_sft(settings, model=models.TINY_MODEL, train_rows=rows, task=OFFLINE_TASK,
                             output_dir=tmp_path / "straight", progress=False)

    info = json.loads((resumed / "training.json").read_text())
    assert info["resumed_from_step"] == 2 and info["steps"] == 4
    assert info["losses"] == json.loads((straight / "training.json").read_text())["losses"]
    a, b = _adapter(resumed), _adapter(straight)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert any(t.abs().max() > 0 for name, t in a.items() if "lora_B" in name)  # it did train
