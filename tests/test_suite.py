"""The offline suite: BIG-bench rows extracted from the source archive, its task files, task mixes,
the average gain over tasks and the runner's multi-task runs."""

import io
import json
import tarfile

import pytest

from nlu_helpers import assets, report, results, rewards, runner, suite, taskfile, tasks
from nlu_helpers.parsing import parse_answer

# One input per allowed task, as the archive writes them (copied from bigbench 1.0.0's task.json files).
INPUTS = {
    "vitaminc_fact_verification": ("Westlife: According to the BPI , Westlife has been certified for 13 million albums .\n"
                                   "Claim: Westlife made under 23.5 million sales in the UK .",
                                   {"evidence": "Westlife: According to the BPI , Westlife has been certified for 13 million albums .",
                                    "claim": "Westlife made under 23.5 million sales in the UK ."}),
    "hyperbaton": ('Which sentence has the correct adjective order: a " old rubber Nigerian prismlike surfboard " '
                   'b " old prismlike Nigerian rubber surfboard " ?',
                   {"option_a": "old rubber Nigerian prismlike surfboard", "option_b": "old prismlike Nigerian rubber surfboard"}),
    "fact_checker/fever": ("On June 2017, the following claim was made: Uta Hagan is incapable of being an American actress.\n"
                           "Q: Was this claim true or false?",
                           {"claim": "Uta Hagan is incapable of being an American actress."}),
    "strategyqa": ("Are there some countries where waiting staff need no tip?",
                   {"question": "Are there some countries where waiting staff need no tip?"}),
    "movie_dialog_same_or_different": ('You said those cables\'re still live. What? Those things bring juice. ----- In the '
                                       'preceding conversation, were the sentences "What?" and "Those things bring juice." ',
                                       {"conversation": "You said those cables're still live. What? Those things bring juice.",
                                        "first": "What?", "second": "Those things bring juice."}),
    "sports_understanding": ("Jamal Murray was perfect from the line", {"statement": "Jamal Murray was perfect from the line"}),
    "logical_fallacy_detection": ("Do you think the following argument is 'Valid' or 'Invalid'? Mario is more reliable than Jill.",
                                  {"argument": "Mario is more reliable than Jill."}),
    "formal_fallacies_syllogisms_negation": ('"Some football fans admire various clubs. First premise: Mario is a friend."\n'
                                             ' Is the argument, given the explicitly stated premises, deductively valid or invalid?',
                                             {"argument": "Some football fans admire various clubs. First premise: Mario is a friend."}),
    "metaphor_boolean": ("The faculty meeting was a circus <-->  The faculty meeting was very interesting",
                         {"sentence": "The faculty meeting was a circus", "paraphrase": "The faculty meeting was very interesting"}),
}


@pytest.mark.parametrize("name", list(suite.BIGBENCH_TASKS))
def test_every_allowed_task_turns_its_input_into_the_columns_its_task_file_shows(name):
    text, columns = INPUTS[name]
    assert suite.BIGBENCH_TASKS[name].columns(text) == columns


def test_rows_take_the_best_target_and_drop_ties_and_repeated_inputs():
    examples = [{"input": "Is water wet?", "target_scores": {"Yes": 1, "No": 0}},
                {"input": "Is fire cold?", "target_scores": {"Yes": 0, "No": 1}},
                {"input": "Is water wet?", "target_scores": {"Yes": 1, "No": 0}},   # repeated: would leak across splits
                {"input": "Unclear?", "target_scores": {"Yes": 0.5, "No": 0.5}}]    # a tie has no label
    rows = suite.rows_from_task_json("strategyqa", {"examples": examples})
    assert rows == [{"question": "Is water wet?", "label": "Yes"}, {"question": "Is fire cold?", "label": "No"}]


def test_splits_are_seeded_disjoint_and_capped(monkeypatch):
    rows = [{"question": f"q{i}", "label": "Yes"} for i in range(100)]
    splits = suite.split_rows(rows)
    assert {k: len(v) for k, v in splits.items()} == {"train": 60, "validation": 20, "test": 20}
    assert suite.split_rows(rows) == splits and suite.split_rows(rows, seed=1) != splits
    seen = [r["question"] for split in splits.values() for r in split]
    assert len(seen) == len(set(seen)) == 100
    monkeypatch.setattr(suite, "MAX_EVAL", 5)
    monkeypatch.setattr(suite, "MAX_TRAIN", 30)
    assert {k: len(v) for k, v in suite.split_rows(rows).items()} == {"train": 30, "validation": 5, "test": 5}


TARGETS = {"vitaminc_fact_verification": ("True", "False"), "hyperbaton": ("a", "b"), "fact_checker/fever": ("true", "false"),
           "strategyqa": ("Yes", "No"), "movie_dialog_same_or_different": ("same", "different"),
           "sports_understanding": ("plausible", "implausible"), "logical_fallacy_detection": ("Valid", "Invalid"),
           "formal_fallacies_syllogisms_negation": ("valid", "invalid"), "metaphor_boolean": ("True", "False"),
           "emoji_movie": ("x", "y")}


def _archive(path):
    """A small stand-in for the bigbench sdist: every allowed task.json with 20 examples, plus a task we must not read."""
    with tarfile.open(path, "w:gz") as tar:
        for name, (text, _) in {**INPUTS, "emoji_movie": ("a movie", {})}.items():
            first, second = TARGETS[name]
            examples = [{"input": text.replace("a", "a" * (i + 1), 1),  # 20 different inputs of the task's shape
                         "target_scores": {first: i % 2, second: 1 - i % 2}} for i in range(20)]
            data = json.dumps({"examples": examples}).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{name}/task.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_the_archive_is_fetched_once_extracted_and_deleted(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NLU_WORKBOOK_CACHE", str(tmp_path / "cache"))
    fetched = []

    def fake_fetch(archive, progress=False):
        fetched.append(archive.requirement)
        return _archive(tmp_path / "bigbench-1.0.0.tar.gz")

    monkeypatch.setattr(assets, "fetch", fake_fetch)
    files = suite.bigbench_files("hyperbaton")
    assert fetched == ["bigbench==1.0.0"] and "358 MB" in capsys.readouterr().out
    assert not (tmp_path / "bigbench-1.0.0.tar.gz").exists()           # only the extracted rows are kept
    train = [json.loads(line) for line in open(files["train"])]
    assert len(train) == 12 and set(train[0]) == {"option_a", "option_b", "label"}
    assert not (tmp_path / "cache" / "data" / "bigbench" / "emoji_movie").exists()  # the rest of BIG-bench stays unread
    suite.bigbench_files("metaphor_boolean")                            # the one fetch extracted every allowed task
    assert fetched == ["bigbench==1.0.0"]
    with pytest.raises(ValueError, match="not in the suite's allowed list"):
        suite.bigbench_files("emoji_movie")


def test_a_failed_fetch_is_one_clear_problem_of_the_task_file(tmp_path, monkeypatch):
    monkeypatch.setenv("NLU_WORKBOOK_CACHE", str(tmp_path / "cache"))

    def no_index(archive, progress=False):
        raise assets.AssetUnavailable("could not fetch bigbench==1.0.0 from the package index (offline)")

    monkeypatch.setattr(assets, "fetch", no_index)
    spec = tmp_path / "mine.yaml"
    spec.write_text("name: mine\ninstruction: Task.\nfields: [statement]\nlabels: [Plausible, Implausible]\nbigbench: sports_understanding\n")
    with pytest.raises(tasks.TaskFileError, match="bigbench: could not fetch bigbench==1.0.0"):
        taskfile.load_task_file(spec)
    spec.write_text(spec.read_text().replace("sports_understanding", "emoji_movie"))
    with pytest.raises(tasks.TaskFileError, match="'emoji_movie' is not one of the suite's BIG-bench tasks"):
        taskfile.load_task_file(spec)


def test_the_index_page_gives_the_archive_url_in_json_and_html(monkeypatch):
    pages = {
        "application/vnd.pypi.simple.v1+json": json.dumps({"files": [
            {"filename": "bigbench-0.0.1.tar.gz", "url": "https://files.example/a/bigbench-0.0.1.tar.gz"},
            {"filename": "bigbench-1.0.0.tar.gz", "url": "https://files.example/b/bigbench-1.0.0.tar.gz"}]}),
        "text/html": '<a href="../../packages/b/bigbench-1.0.0.tar.gz#sha256=1bb3">bigbench-1.0.0.tar.gz</a>',
    }

    class Page(io.BytesIO):
        def __init__(self, kind):
            super().__init__(pages[kind].encode())
            self.headers = {"content-type": kind}

    for kind, expected in (("application/vnd.pypi.simple.v1+json", "https://files.example/b/bigbench-1.0.0.tar.gz"),
                           ("text/html", "https://index.example/packages/b/bigbench-1.0.0.tar.gz")):
        monkeypatch.setattr(assets.urllib.request, "urlopen", lambda request, timeout=0, kind=kind: Page(kind))
        assert assets._file_url("https://index.example/simple", suite.BIGBENCH_SDIST) == expected


@pytest.fixture
def fake_rows(tmp_path, monkeypatch):
    """Suite tasks whose rows come from a small archive instead of the 358 MB one."""
    monkeypatch.setenv("NLU_WORKBOOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(tasks.TASK_FILES_ENV, "")
    monkeypatch.setattr(assets, "fetch", lambda archive, progress=False: _archive(tmp_path / "bb.tar.gz"))
    yield
    for name in list(tasks.TASKS):
        if tasks.TASKS[name].source and str(suite.SUITE_DIR) in tasks.TASKS[name].source:
            tasks.TASKS.pop(name)
    tasks._ALIASES.clear()
    for task in tasks.TASKS.values():
        tasks._index(task)
    taskfile._LOADED.clear()


def test_every_packaged_task_file_loads_by_name(fake_rows):
    for name, path in suite.suite_task_files().items():
        task = tasks.get_task(name)
        assert task.name == name and task.source == str(path) and task.kind == "classification"
        assert task.build_prompt({c: "x" for _, (c,) in task.fields}).endswith("<Judgement>")


def test_nested_label_words_parse_and_reward_right(fake_rows):
    task = tasks.get_task("sports-understanding")             # "Plausible" sits inside "Implausible"
    assert task.answer_words == ("Plausible", "Implausible")
    for strict in (True, False):
        assert parse_answer(task, " Implausible </Judgement>", strict=strict) == 1
        assert parse_answer(task, " Plausible </Judgement>", strict=strict) == 0
    row = {"statement": "Jamal Murray was perfect from the line", "label": 1}
    assert rewards.reward(task, " Implausible </Judgement>", row) == rewards.PAPER.correct
    assert rewards.reward(task, " Plausible </Judgement>", row) == rewards.PAPER.wrong


def test_a_task_mix_asks_each_rows_own_task(fake_rows):
    mix, rows = tasks.mix_rows({"hyperbaton": [{"option_a": "x y", "option_b": "y x", "label": 0}],
                                "movie-snippets": [{"sentence": "a fine film", "label": 1}]}, seed=0)
    assert mix.name == "multi-task" and tasks.get_task(mix) is mix and {r["task"] for r in rows} == {"hyperbaton", "movie-snippets"}
    by_task = {r["task"]: r for r in rows}
    assert mix.build_prompt(by_task["movie-snippets"]) == tasks.get_task("movie-snippets").build_prompt(by_task["movie-snippets"])
    assert "A: x y" in mix.build_prompt(by_task["hyperbaton"])
    assert rewards.reward(mix, " Positive </Judgement>", by_task["movie-snippets"]) == rewards.PAPER.correct
    assert rewards.reward(mix, " A </Judgement>", by_task["hyperbaton"]) == rewards.PAPER.correct
    assert rewards.reward(mix, " Positive </Judgement>", by_task["hyperbaton"]) == rewards.PAPER.unparseable
    with pytest.raises(ValueError, match="not in this mix; allowed: hyperbaton, movie-snippets"):
        mix.check_label({"task": "rte", "label": 0})


def _save(tmp_path, stage, task, preds, refs):
    acc = sum(p == r for p, r in zip(preds, refs)) / len(refs)
    record = {"stage": stage, "task": task, "split": "validation", "mode": "generate", "metrics": {"accuracy": acc}}
    results.save_result(record, tmp_path, f"{stage}-{task}",
                        [{"index": i, "label": r, "prediction": p} for i, (p, r) in enumerate(zip(preds, refs))])


def test_the_average_gain_pairs_rows_within_each_task(tmp_path):
    refs = [0, 1] * 50
    _save(tmp_path, "sft", "movie-snippets", [0] * 100, refs)                     # 50%
    _save(tmp_path, "ppo", "movie-snippets", refs[:60] + [0] * 40, refs)          # 80%
    _save(tmp_path, "sft", "rte", [0] * 100, refs)                                # 50%
    _save(tmp_path, "ppo", "rte", [0] * 100, refs)                                # 50%
    records = report.pick(results.load_results(tmp_path))
    [row] = report.average_gains(tmp_path, records, [("sft", "ppo")], n_resamples=300)
    assert row["comparison"] == "ppo - sft" and row["tasks"] == 2 and row["rows"] == 200
    assert row["gain"] == pytest.approx(15.0)                                     # (30 + 0) / 2 points
    assert 5 < row["low"] < 15 < row["high"] < 25 and row["above_zero"]
    assert report.average_gains(tmp_path, records, [("sft", "encoder")]) == []
    markdown = report.table_markdown(report.paper_table(records), [row]).splitlines()
    assert markdown[0] == "| stage | movie-snippets | rte | average | paper's average (7B, GLUE) |"
    assert markdown[2] == "| sft | 50.0 | 50.0 | **50.0** | 78.5 |" and markdown[3] == "| ppo | 80.0 | 50.0 | **65.0** | 84.8 |"
    assert markdown[-1].startswith("| ppo - sft | +15.0 | [+")


def test_profiles_run_task_notebooks_each_first_or_multi_task(tmp_path):
    paths = runner.notebook_paths()
    profile = runner.load_profile("cpu-suite")
    keys = [key for _, _, key in runner.work_items(paths, profile, {})]
    names = profile["parameters"]["tasks"]
    assert keys[0] == f"01_prompt_design:{names[0]}"                              # first: one illustration
    assert [k for k in keys if k.startswith("03")] == ["03_lora_sft:multi-task"]  # the paper's SFT: one adapter, every task
    assert [k for k in keys if k.startswith("04")] == [f"04_ppo:{n}" for n in names] + ["04_ppo:multi-task"]
    [multi] = [item for item in runner.work_items(paths, profile, {}) if item[2] == "04_ppo:multi-task"]
    assert multi[1] == names
    bad = {**profile, "notebooks": {**profile["notebooks"], "04_ppo": {"runs": ["all"]}}}
    with pytest.raises(ValueError, match=r"notebooks.04_ppo.runs \['all'\]: allowed values are each, first, multi-task"):
        runner.work_items(paths, bad, {})
