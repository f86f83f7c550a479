"""The T4 estimate (``python -m benchmarks.t4_estimate``): its work counts follow the profile, its host figures are measured.

A script that prints an estimate: these tests check what it counts and that it runs, never a speed.
"""

import copy
import json

import pytest

from benchmarks import t4_estimate
from nlu_helpers import runner

pytestmark = pytest.mark.usefixtures("one_thread")
HOST = {"forward": 0.01, "train": 0.05}  # seconds, given so no test measures the full 24 layers


@pytest.fixture
def changed_profile(monkeypatch):
    """Make ``colab-t4`` read as itself with some values replaced (notebook sections or parameters)."""
    original = runner.load_profile

    def change(notebooks: dict | None = None, parameters: dict | None = None) -> None:
        content = copy.deepcopy(original("colab-t4"))
        content["parameters"].update(parameters or {})
        for name, values in (notebooks or {}).items():
            content["notebooks"].setdefault(name, {}).update(values)
        monkeypatch.setattr(runner, "load_profile", lambda name: copy.deepcopy(content) if name == "colab-t4" else original(name))

    return change


def _ppo_passes(work: dict) -> float:
    return sum(j.count for j in work["04_ppo"]["jobs"] if j.kind == "ppo")


def test_doubling_ppo_steps_doubles_notebook_04s_ppo_work(changed_profile):
    before = t4_estimate.notebook_work("colab-t4")
    steps = runner.load_profile("colab-t4")["notebooks"]["04_ppo"]["ppo_steps"]
    changed_profile({"04_ppo": {"ppo_steps": 2 * steps}})
    after = t4_estimate.notebook_work("colab-t4")
    assert after["04_ppo"]["counted"]["PPO steps"] == 2 * before["04_ppo"]["counted"]["PPO steps"] == 2 * 3 * steps
    assert _ppo_passes(after) == pytest.approx(2 * _ppo_passes(before))
    assert after["02_zero_few_shot"]["counted"] == before["02_zero_few_shot"]["counted"]


def test_rows_and_runs_follow_the_profile_and_split_sizes(changed_profile):
    changed_profile(parameters={"eval_limit": 300, "tasks": ["sst2", "rte"]})
    work = t4_estimate.notebook_work("colab-t4")
    rows = 300 + 277  # RTE's validation split has 277 rows: the limit cannot add more
    # 02: zero- and 5-shot; generate once, score twice (with calibration), plus 4 x 20 tilt rows per task
    assert work["02_zero_few_shot"]["counted"] == {"runs": 2, "rows generated": 2 * rows, "rows scored": 4 * rows + 2 * 80}
    assert work["03_lora_sft"]["counted"]["SFT steps"] == 2 * 250
    assert work["05_encoder_baseline"]["counted"]["encoder steps"] == 3 * (-(-67_349 // 32) + -(-2_490 // 32))
    assert work["06_results"]["counted"] == {"runs": 1}


def test_unknown_task_sizes_are_an_error(changed_profile):
    changed_profile(parameters={"tasks": ["sst2", "boolq"]})
    with pytest.raises(ValueError, match="boolq"):
        t4_estimate.notebook_work("colab-t4")


def test_host_figures_are_measured_and_positive():
    assert 0 < t4_estimate.host_decode_seconds(layers=2) < 1
    assert 0 < t4_estimate.host_train_seconds(layers=2) < 5


def test_estimate_prints_its_table_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(t4_estimate, "host_decode_seconds", lambda model: HOST["forward"])
    monkeypatch.setattr(t4_estimate, "host_train_seconds", lambda model: HOST["train"])
    result = t4_estimate.main(["--json", str(tmp_path / "t4.json")])
    out = capsys.readouterr().out
    assert "ESTIMATE" in out and "assumptions:" in out and "04_ppo" in out
    assert list(result["notebooks"]) == [p.stem for p in runner.notebook_paths()]
    assert all(row["minutes"] >= t4_estimate.STARTUP_S / 60 for row in result["notebooks"].values())
    assert result["total_minutes"] == pytest.approx(sum(r["minutes"] for r in result["notebooks"].values()))
    assert json.loads((tmp_path / "t4.json").read_text())["estimate"] is True


def _gpu_check(tmp_path, ppo_step_s: float, dry_run: bool = False) -> str:
    bench = {"ppo": {"config": {"prompts_per_step": 16, "batch_size": 8, "ppo_epochs": 2}, "prompt_width": 100,
                     "response_width": 12, "median_step_s": ppo_step_s},
             "sft": {"tokens_per_step": 1600, "gradient_accumulation_steps": 1, "median_step_s": 0.2},
             "eval": {"rows": 64, "batch_size": 16, "mean_prompt_tokens": 97,
                      "generate": {"examples_per_s": 100.0, "max_new_tokens": 8}, "score": {"examples_per_s": 400.0}}}
    record = {"meta": {"dry_run": dry_run}, "parts": {
        "env": {"figures": {"rates": {"fp16_matmul_flops": 700e12, "copy_bytes_per_s": 4e12}}},
        "bench-t4": {"figures": {"parts": bench}}}}
    path = tmp_path / f"gpu-check-{ppo_step_s}.json"
    path.write_text(json.dumps(record))
    return str(path)


def test_gpu_check_calibrates_by_measured_over_predicted(tmp_path):
    one, two = (t4_estimate.calibration(_gpu_check(tmp_path, s), HOST) for s in (0.5, 1.0))
    assert two["ppo"] == pytest.approx(2 * one["ppo"]) and all(v > 0 for v in one.values())
    plain = t4_estimate.estimate(host=HOST)["notebooks"]["04_ppo"]["minutes"]
    calibrated = t4_estimate.estimate(gpu_check=_gpu_check(tmp_path, 1.0), host=HOST)
    assert calibrated["calibration"] == pytest.approx(two) and calibrated["notebooks"]["04_ppo"]["minutes"] != pytest.approx(plain)
    with pytest.raises(ValueError, match="dry run"):
        t4_estimate.calibration(_gpu_check(tmp_path, 1.0, dry_run=True), HOST)
