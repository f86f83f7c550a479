"""Task files: a user's YAML task wherever a task name goes, checked before anything runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from examples import teach
from nlu_helpers import data, evaluation
from nlu_helpers.models import TINY_MODEL, load_model, load_tokenizer
from nlu_helpers.parsing import parse_answer
from nlu_helpers.report import load_predictions
from nlu_helpers.rewards import reward
from nlu_helpers.tasks import TASK_FILES_ENV, TASKS, TaskFileError, check_task_file, get_task

SURE_ROWS = {
    "train": [("It will rain, the clouds say so.", "yes"), ("Maybe it rains, maybe not.", "unsure"),
              ("The forecast is certain: sun.", "yes"), ("Who knows what tomorrow brings.", "unsure")],
    "validation": [("No doubt at all, it is done.", "yes"), ("Hard to say either way.", "unsure"),
                   ("Perhaps, perhaps not.", "unsure")],
}
SURE_YAML = """\
name: {name}
instruction: "Task: decide whether the writer is sure (Sure) or not (Not sure)."
fields: [statement]
label_column: verdict
labels:
  yes: Sure          # a plain YAML 'yes' would be a boolean: here it stays the text 'yes'
  unsure: Not sure   # label 1's word holds label 0's word
data_files: {{train: data/train.csv, validation: data/dev.jsonl}}
metrics: [accuracy, f1]
"""


@pytest.fixture(autouse=True)
def _own_task_files_env(monkeypatch):
    """Each test's loaded task files stay out of later tests' environment."""
    monkeypatch.delenv(TASK_FILES_ENV, raising=False)


def write_sure_task(folder: Path, name: str, rows: dict[str, list[tuple[str, str]]] = SURE_ROWS,
                    sure_value: str = "yes") -> Path:
    """A task file with string labels whose words contain each other, data in a sub-folder: train as
    CSV, validation as JSONL; ``sure_value`` is the file's value for "Sure" (the other is "unsure")."""
    (folder / "data").mkdir(parents=True)
    lines = ["statement,verdict"] + [f'"{text}",{label}' for text, label in rows["train"]]
    (folder / "data" / "train.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "data" / "dev.jsonl").write_text(
        "".join(json.dumps({"statement": t, "verdict": v}) + "\n" for t, v in rows["validation"]), encoding="utf-8")
    path = folder / "task.yaml"
    path.write_text(SURE_YAML.format(name=name).replace("  yes: Sure ", f"  {sure_value}: Sure "), encoding="utf-8")
    return path


def test_a_task_file_is_a_task_name(tmp_path, monkeypatch):
    path = write_sure_task(tmp_path, "tf-sure")
    monkeypatch.chdir(tmp_path)
    task = get_task("task.yaml")  # relative to the working folder; data paths relative to the file
    assert (task.name, task.label_words, task.label_values) == ("tf-sure", ("Sure", "Not sure"), ("yes", "unsure"))
    assert task.source == str(path) and task.metrics == ("accuracy", "f1") and task.eval_splits == ("validation",)
    assert get_task(path) is task and get_task("TF-Sure") is task and TASKS["tf-sure"] is task
    train = data.load_split(get_task(str(path)), "train")
    assert train.to_list() == [{"statement": t, "label": ["yes", "unsure"].index(v), "idx": i}
                               for i, (t, v) in enumerate(SURE_ROWS["train"])]
    assert data.load_split(str(path), "validation")["label"] == [0, 1, 1]
    assert task.build_prompt(train[1]).endswith("Statement: Maybe it rains, maybe not.\nAssistant: <Judgement>")
    assert task.target(train[1]) == " Not sure </Judgement>"


def test_a_loaded_task_name_reaches_child_processes(tmp_path):
    path = write_sure_task(tmp_path, "tf-child")
    get_task(path)
    code = "from nlu_helpers.tasks import get_task; t = get_task('tf-child'); print(t.source, t.label_words)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "data", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{path} ('Sure', 'Not sure')"  # a notebook kernel started by the runner, say


def test_a_changed_task_file_is_read_again(tmp_path):
    path = write_sure_task(tmp_path, "tf-changed")
    first = get_task(path)
    path.write_text(path.read_text().replace("metrics: [accuracy, f1]", "metrics: [mcc]"), encoding="utf-8")
    second = get_task(path)
    assert first.metrics == ("accuracy", "f1") and second.metrics == ("mcc",) and get_task("tf-changed") is second


def test_list_labels_are_ids_and_parquet_is_read(tmp_path):
    import pyarrow
    import pyarrow.parquet

    pyarrow.parquet.write_table(pyarrow.table({"text": ["a", "b", "c"], "label": [0.0, 1.0, 2.0]}), tmp_path / "train.parquet")
    (tmp_path / "t.yml").write_text(
        "name: tf-list\ninstruction: \"Task: pick.\"\nfields: {text: Passage}\nlabels: [Low, Mid, High]\n"
        "data_files: {train: train.parquet}\n", encoding="utf-8")
    task = get_task(tmp_path / "t.yml")
    assert task.label_values is None and task.fields == (("Passage", ("text",)),)
    assert data.load_split(task, "train")["label"] == [0, 1, 2]


def test_a_hub_data_set_stands_in_for_files(tmp_path):
    (tmp_path / "hub.yaml").write_text(
        "name: tf-hub\ninstruction: \"Task: say Yes or No.\"\nfields: [question]\nlabels: [No, Yes]\n"
        "dataset: someone/yes-no\nconfig: plain\nsplits: {train: train, validation: dev}\n", encoding="utf-8")
    task = get_task(tmp_path / "hub.yaml")  # the data is checked when it is loaded, not here
    assert (task.hub_id, task.hub_config, dict(task.splits)) == ("someone/yes-no", "plain", {"train": "train", "validation": "dev"})
    with pytest.raises(RuntimeError, match="someone/yes-no.*'dev'.*unreachable"):  # the test suite runs offline
        data.load_split(task, "validation")


def test_check_reports_prompt_counts_and_no_problems(tmp_path):
    path = write_sure_task(tmp_path, "tf-check")
    report = check_task_file(path)
    assert "train: 4 rows: Sure 2, Not sure 2" in report
    assert "validation: 3 rows: Sure 1, Not sure 2" in report
    assert "Statement: It will rain, the clouds say so.\nAssistant: <Judgement> Sure </Judgement>" in report
    assert report.endswith("ok: no problems")
    assert "tf-check" not in TASKS  # checking registers nothing


def _bad_file(tmp_path: Path) -> Path:
    (tmp_path / "train.csv").write_text("statement,verdict\nfine,yes\n,unsure\nodd,maybe\n", encoding="utf-8")
    (tmp_path / "dev.csv").write_text("text,verdict\nfine,yes\n", encoding="utf-8")
    (tmp_path / "test.csv").write_text("statement,verdict\n", encoding="utf-8")
    path = tmp_path / "bad.yaml"
    path.write_text(SURE_YAML.format(name="tf-bad").replace(
        "data_files: {train: data/train.csv, validation: data/dev.jsonl}",
        "data_files: {train: train.csv, validation: dev.csv, test: test.csv}"), encoding="utf-8")
    return path


BAD_ROWS = [
    "train.csv', row 2: the text in column 'statement' is blank",
    "train.csv', row 3: label 'maybe' is not a label value of the task; allowed: yes, unsure",
    "dev.csv' has no column 'statement'",
    "test.csv' has no rows (split 'test' is empty)",
]


def test_a_bad_file_gets_one_line_per_problem_and_registers_nothing(tmp_path):
    path = _bad_file(tmp_path)
    report = check_task_file(path)
    problem_lines = [line for line in report.splitlines() if line.startswith("  - ")]
    assert len(problem_lines) == 4 and report.endswith("4 problems")
    for expected, line in zip(BAD_ROWS, problem_lines):
        assert expected in line
    with pytest.raises(TaskFileError) as info:
        get_task(path)
    assert isinstance(info.value, ValueError) and len(info.value.problems) == 4
    assert all(expected in str(info.value) for expected in BAD_ROWS)
    assert "tf-bad" not in TASKS


@pytest.mark.parametrize("change,expected", [
    (("unsure: Not sure", "unsure: sure"), "label word 'sure' and 'Sure' differ only in letter case"),
    (("unsure: Not sure", "unsure: Sure"), "label word 'Sure' is given twice"),
    (("label_column: verdict", "label_colum: verdict"), "unknown key 'label_colum' (did you mean 'label_column'?)"),
    (("name: tf-keys", "name: SST2"), "name 'SST2' is taken by task 'sst2'"),
    (("metrics: [accuracy, f1]", "metrics: [bleu]"), "metrics ['bleu']: allowed are accuracy, f1, mcc"),
    (("data/train.csv", "data/nope.csv"), "'data/nope.csv' (split 'train') does not exist"),
    (("data/train.csv", "data/train.txt"), "allowed: .csv, .json, .jsonl, .parquet"),
    (("fields: [statement]", "fields: [statement]\nfields: [other]"), "key 'fields' is given twice"),
    (("(Not sure).\"", "(Not sure)."), "not valid YAML: line 10: found unexpected end of stream (while scanning a quoted scalar on line 2)"),
    (("instruction:", "instruction: [x]\ninstruction2:"), "instruction must be the task's text"),
])
def test_bad_task_files_name_the_problem(tmp_path, change, expected):
    path = write_sure_task(tmp_path, "tf-keys")
    path.write_text(path.read_text().replace(*change), encoding="utf-8")
    report = check_task_file(path)
    assert expected in report, report
    with pytest.raises(TaskFileError, match=re.escape(expected)):
        get_task(path)
    assert "tf-keys" not in TASKS


def test_a_missing_task_file_is_named(tmp_path):
    with pytest.raises(TaskFileError, match="does not exist"):
        get_task(tmp_path / "nope.yaml")


# -- the tiny model: scoring and generation with label words inside each other --------------

@pytest.fixture(scope="module")
def sure_task(tmp_path_factory):
    return get_task(write_sure_task(tmp_path_factory.mktemp("sure"), "tf-sure-model"))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY_MODEL)


@pytest.fixture(scope="module")
def not_sure_model(sure_task, tokenizer):
    """The tiny model after a few gradient steps on one answer: it writes " Not sure </Judgement>"."""
    torch.manual_seed(0)
    model = load_model(TINY_MODEL, device="cpu")
    row = data.load_split(sure_task, "train")[1]
    prompt = tokenizer(sure_task.build_prompt(row))["input_ids"]
    answer = tokenizer(sure_task.target(row), add_special_tokens=False)["input_ids"]
    return teach(model, prompt, answer)


def test_a_user_task_runs_through_both_evaluation_modes(sure_task, not_sure_model, tokenizer):
    rows = data.load_split(sure_task.source, "validation", limit=3)
    generated = evaluation.evaluate(not_sure_model, tokenizer, sure_task.source, rows, mode="generate",
                                    max_new_tokens=8, strict=True, n_bootstrap=0, progress=False)
    texts = [p["text"] for p in generated.predictions]
    assert all(text.startswith(" Not sure </Judgement>") for text in texts), texts
    assert [p["prediction"] for p in generated.predictions] == [1, 1, 1]  # not "Sure", not unparseable
    assert generated.unparseable == 0 and generated.metrics["accuracy"] == pytest.approx(2 / 3)
    assert [reward(sure_task, t, r) for t, r in zip(texts, rows)] == [-1.0, 1.0, 1.0]
    assert [parse_answer(sure_task, t, strict=True) for t in texts] == [1, 1, 1]

    scored = evaluation.evaluate(not_sure_model, tokenizer, sure_task, rows, mode="score", n_bootstrap=0, progress=False)
    assert evaluation._continuations(sure_task) == [" Sure", " Not sure"]
    # each label's score is the log-likelihood of its whole word, every token of it
    prompt = sure_task.build_prompt(rows[0])
    for j, word in enumerate([" Sure", " Not sure"]):
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(word, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(not_sure_model(torch.tensor([p + c])).logits[0].float(), -1)
        expected = sum(float(logp[len(p) - 1 + i, tok]) for i, tok in enumerate(c))
        assert scored.predictions[0]["scores"][j] == pytest.approx(expected, abs=1e-3)
    assert [p["prediction"] for p in scored.predictions] == [1, 1, 1]
    assert scored.label_share["Not sure"]["predicted"] == 1.0


# -- a user's task file through the runner's notebooks 02-05 and the sft / ppo / eval commands --------

def write_review_task(folder: Path, name: str) -> Path:
    """The same kind of task file with enough rows for 5-shot prompts and a few training steps."""
    sure = ["The parcel arrives on Monday.", "This is the right key.", "We won the match.", "The shop opens at nine."]
    unsure = ["The parcel may arrive Monday, or not.", "This could be the key, I think.", "Perhaps we won?",
              "The shop might open at nine."]
    rows = [(f"{text} ({i})", label) for i in range(6) for texts, label in ((sure, "certain"), (unsure, "unsure"))
            for text in texts]
    return write_sure_task(folder, name, {"train": rows[:32], "validation": rows[32:]}, sure_value="certain")


def test_a_user_task_file_runs_through_notebooks_02_to_05_by_the_runner(tmp_path):
    from nlu_helpers import runner
    from nlu_helpers.results import load_results

    path = write_review_task(tmp_path / "mine", "tf-runner")
    run_dir = runner.run("smoke", run_dir=tmp_path / "run", only=["02", "03", "04", "05"],
                         overrides={"task": str(path)}, progress=False)
    status = json.loads((run_dir / "run.json").read_text())
    assert [key.split(":")[0] for key in status["notebooks"]] == ["02_zero_few_shot", "03_lora_sft", "04_ppo", "05_encoder_baseline"]
    assert all(entry["status"] == "done" for entry in status["notebooks"].values()), status
    assert {p.name for p in (run_dir / "adapters").iterdir()} >= {"sft-tf-runner", "ppo-tf-runner"}
    records = [r for r in load_results(run_dir) if "metrics" in r]
    assert {r["task"] for r in records} == {"tf-runner"}
    assert {"zero-shot", "few-shot", "sft", "ppo", "encoder"} <= {r["stage"] for r in records}
    assert all(0.0 <= r["metrics"]["accuracy"] <= 1.0 and "f1" in r["metrics"] for r in records)


def test_a_user_task_file_goes_to_the_sft_ppo_and_eval_commands(tmp_path, capsys):
    from nlu_helpers import cli

    path = str(write_review_task(tmp_path / "mine", "tf-commands"))
    common = ["--model", "tiny-random", "--device", "cpu", "--task", path, "--output-dir", str(tmp_path / "out")]
    assert cli.main(["sft", *common, "--train-limit", "8", "--max-steps", "2", "--batch-size", "4"]) == 0
    assert (tmp_path / "out" / "adapters" / "sft-tf-commands" / "adapter_model.safetensors").is_file()
    assert cli.main(["ppo", *common, "--preset", "smoke", "--train-limit", "8", "--ppo-steps", "1"]) == 0
    assert "task 'tf-commands'" in capsys.readouterr().out
    assert (tmp_path / "out" / "adapters" / "ppo-tf-commands" / "adapter_model.safetensors").is_file()
    verdicts = [json.loads(line)["verdict"] for line in (tmp_path / "mine" / "data" / "dev.jsonl").read_text().splitlines()]
    for mode in ("generate", "score"):
        assert cli.main(["eval", *common, "--mode", mode, "--eval-limit", "6", "--n-bootstrap", "20",
                         "--adapter", str(tmp_path / "out" / "adapters" / "ppo-tf-commands")]) == 0
        printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        record = json.loads(Path(printed["result"]).read_text())
        assert (record["task"], record["mode"], record["n"], record["stage"]) == ("tf-commands", mode, 6, "ppo")
        rows = load_predictions(tmp_path / "out", record)
        assert len(rows) == 6 and all(row["label"] == ["certain", "unsure"].index(verdicts[row["idx"]]) for row in rows)
