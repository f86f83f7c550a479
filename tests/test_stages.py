"""The bookkeeping notebooks 02-05 share: profile settings, evaluating a stage, finding earlier
results, the stage table and bar groups; and the plots built on them."""

import pytest
import torch

from nlu_helpers import data, plots, results, stages
from nlu_helpers.models import TINY_MODEL, load_model, load_tokenizer


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model(TINY_MODEL, device="cpu"), load_tokenizer(TINY_MODEL)


def test_notebook_settings_take_the_profile_over_the_defaults():
    smoke = stages.notebook_settings("smoke", "02_zero_few_shot")
    assert smoke.batch_size == 8  # the notebook's section
    assert smoke.n_bootstrap == 50  # the profile's parameters, for every notebook that reads the key
    assert smoke.shot_strategy == "random" and smoke.calibrate is True  # not in the profile: the default
    assert stages.notebook_settings("paper", "02_zero_few_shot").shot_strategy == "first"
    assert stages.notebook_settings("smoke", "03_lora_sft").save_steps == 2
    assert stages.notebook_settings("colab-t4", "03_lora_sft").load_in_4bit is True
    assert stages.notebook_settings("cpu-demo", "03_lora_sft").load_in_4bit is False
    with pytest.raises(ValueError, match="no settings for notebook '07_new'.*04_ppo"):
        stages.notebook_settings("smoke", "07_new")
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        stages.notebook_settings("fast", "02_zero_few_shot")


def test_evaluate_stage_saves_every_split_and_mode_and_measured_finds_them(tiny, tmp_path):
    model, tokenizer = tiny
    rows = {"validation": data.load_split("movie-snippets", "validation", limit=4, shuffle_seed=0)}
    common = dict(notebook="02_zero_few_shot", profile="smoke", output_dir=tmp_path, batch_size=4, max_new_tokens=3,
                  n_bootstrap=0, progress=False, model_name=TINY_MODEL)
    zero = stages.evaluate_stage(model, tokenizer, "movie-snippets", rows, stage="zero-shot", calibrate=True, **common)
    assert [(r["mode"], r["calibrated"]) for r in zero] == [("generate", False), ("score", False), ("score", True)]
    assert [r["name"] for r in zero] == ["02-zero-shot-movie-snippets-validation-generate-k0",
                                         "02-zero-shot-movie-snippets-validation-score-k0",
                                         "02-zero-shot-movie-snippets-validation-score-calibrated-k0"]
    assert all(len(r["predictions"]) == 4 and r["stage"] == "zero-shot" and r["profile"] == "smoke" for r in zero)
    shots = list(data.load_split("movie-snippets", "train", limit=2))
    few = stages.evaluate_stage(model, tokenizer, "movie-snippets", rows, stage="few-shot", shots=shots, modes=["score"], **common)
    assert [(r["name"], r["k"]) for r in few] == [("02-few-shot-movie-snippets-validation-score-k2", 2)]

    saved = results.load_results(tmp_path)
    assert len(saved) == 4 and all("predictions" not in r for r in saved)  # predictions live beside the record
    assert (tmp_path / "results" / "02-few-shot-movie-snippets-validation-score-k2.predictions.jsonl").is_file()
    found = stages.measured(tmp_path, "movie-snippets")
    assert [r["name"] for r in found] == ["02-few-shot-movie-snippets-validation-score-k2",
                                          "02-zero-shot-movie-snippets-validation-generate-k0",
                                          "02-zero-shot-movie-snippets-validation-score-k0"]  # calibrated left out
    assert [r["name"] for r in stages.measured(tmp_path, "movie-snippets", stages=["zero-shot"], mode="score")] == [
        "02-zero-shot-movie-snippets-validation-score-k0"]
    assert stages.measured(tmp_path, "movie-snippets", n=5) == [] and stages.measured(tmp_path, "sst2") == []
    with pytest.raises(ValueError, match="stage 'warm-up' is not known"):
        stages.evaluate_stage(model, tokenizer, "movie-snippets", rows, stage="warm-up", **common)


def _record(stage, value, *, mode="generate", k=0, split="validation", task="movie-snippets", calibrated=False, **extra):
    return {"stage": stage, "task": task, "split": split, "mode": mode, "k": k, "calibrated": calibrated, "n": 10,
            "unparseable": 1, "metrics": {"accuracy": value}, "ci": {"accuracy": [value - 0.1, value + 0.1]},
            "examples_per_s": 3.0, **extra}


def test_stage_table_keeps_the_later_of_two_equal_evaluations_and_names_the_metric():
    table = stages.stage_table([_record("zero-shot", 0.5), _record("sft", 0.8), _record("zero-shot", 0.6),
                                _record("zero-shot", 0.7, mode="score", calibrated=True)])
    assert list(table.columns) == ["stage", "split", "k", "mode", "accuracy", "95% CI", "unparseable", "random fill-in", "examples/s"]
    assert table[["stage", "mode", "accuracy"]].values.tolist() == [
        ["zero-shot", "generate", 0.6], ["zero-shot", "score + calibration", 0.7], ["sft", "generate", 0.8]]
    assert table["95% CI"].tolist()[2] == "[0.700, 0.900]" and table["unparseable"].tolist()[2] == "1/10"
    mixed = stages.stage_table([_record("sft", 0.8), _record("sft", 0.4, task="cola", metrics={"mcc": 0.4, "accuracy": 0.7})])
    assert {"task", "metric", "value"} <= set(mixed.columns) and mixed["metric"].tolist() == ["accuracy", "mcc"]
    assert stages.stage_table([]).empty


def test_bar_groups_label_bars_and_keep_the_intervals():
    records = [_record("zero-shot", 0.5), _record("zero-shot", 0.6, mode="score"), _record("few-shot", 0.4, k=5),
               _record("few-shot", 0.7, k=5, mode="score", calibrated=True)]
    groups, errors = stages.bar_groups(records, x="k", series="mode")
    assert groups == {"k=0": {"generate": 0.5, "score": 0.6}, "k=5": {"generate": 0.4, "score + calibration": 0.7}}
    assert errors["k=5"]["generate"] == pytest.approx((0.3, 0.5))
    groups, _ = stages.bar_groups([_record("sft", 0.8, split="validation_matched", task="mnli"),
                                   _record("sft", 0.7, split="validation_mismatched", task="mnli")], x="mode", series="stage")
    assert groups == {"generate · validation_matched": {"sft": 0.8}, "generate · validation_mismatched": {"sft": 0.7}}
    groups, _ = stages.bar_groups([_record("sft", 0.8, split="validation_matched", task="mnli"),
                                   _record("ppo", 0.9, split="validation_mismatched", task="mnli")], x="column", series="stage")
    assert groups == {"mnli-m": {"sft": 0.8}, "mnli-mm": {"ppo": 0.9}}


def test_log_figure_draws_every_key_or_names_the_missing_one(tmp_path):
    log = [{"step": 1, "reward": -3.0, "unparseable": 1.0}, {"step": 2, "reward": -1.0, "unparseable": 0.5}]
    figure = plots.log_figure(log, ["reward", "unparseable"], title="t", path=tmp_path / "f.png")
    assert (tmp_path / "f.png").is_file()
    assert [list(line.get_ydata()) for ax in figure.axes if ax.get_visible() for line in ax.get_lines()] == [[-3.0, -1.0], [1.0, 0.5]]
    with pytest.raises(KeyError, match=r"no \['unparseable_rate'\]; its keys are \['reward', 'step', 'unparseable'\]"):
        plots.log_figure(log, ["reward", "unparseable_rate"])  # the key notebook 06 used to look for


def test_live_plot_close_can_redraw_a_resumed_run_from_its_whole_log(tmp_path):
    plot = plots.LivePlot(["loss"], min_interval=0)
    plot.update(3, {"loss": 0.5})  # the only step this kernel ran
    plot.close(tmp_path / "loss.png", history=[{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}, {"step": 3, "loss": 0.5}])
    assert plot.history["loss"] == ([1.0, 2.0, 3.0], [2.0, 1.0, 0.5]) and (tmp_path / "loss.png").is_file()


def test_the_ppo_curves_are_keys_the_trainer_logs():
    """Notebook 06 drew `mean_reward`, `rollout_accuracy`, `unparseable_rate`: keys the log never had."""
    from nlu_helpers import ppo

    rows = list(data.load_split("movie-snippets", "train", limit=4))
    config = ppo.preset("smoke", prompts_per_step=2, batch_size=1, gradient_accumulation_steps=2, ppo_epochs=1,
                        max_new_tokens=(2, 3))
    trainer = ppo.PPOTrainer(TINY_MODEL, "movie-snippets", rows, config, device="cpu")
    row = trainer.step()
    assert set(plots.PPO_CURVES) <= set(row), set(plots.PPO_CURVES) - set(row)
