"""The offline suite: real, human-labelled NLU tasks from the ``bigbench==1.0.0`` source archive.

BIG-bench (Apache-2.0) keeps each task as a ``task.json`` whose examples carry an ``input`` and
``target_scores`` (the right answer scores 1). The archive is 358 MB, so it is fetched through the
package index only when a suite task is first asked for; the rows of the tasks below are
extracted into the cache (``<cache>/data/bigbench/<task>/{train,validation,test}.jsonl``) and the
archive is deleted. Each suite task is a task file shipped in ``nlu_helpers/suite/`` (the format
users write, with ``bigbench: <task>`` where a user's file has ``data_files``).

Only the tasks in :data:`BIGBENCH_TASKS` may be used: the rest of BIG-bench is kept for
independent checks. Splits are seeded and fixed: duplicates of an input are dropped, the rows are
shuffled with :data:`SPLIT_SEED`, a fifth (at most 1,000) goes to validation, a fifth (at most
1,000) to test, and at most 4,000 to train, so CPU runs stay in budget.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from nlu_helpers import assets

BIGBENCH_SDIST = assets.Archive(
    "bigbench==1.0.0",
    "bigbench-1.0.0.tar.gz",
    "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
    source=True,
    direct=True,  # pip can't even download it: its metadata names a local-file dependency (bleurt)
)
SPLIT_SEED = 0
MAX_TRAIN, MAX_EVAL = 4000, 1000  # rows kept per split (validation and test each get at most MAX_EVAL)
SUITE_DIR = Path(__file__).with_name("suite")  # the packaged task files
FORMAT_VERSION = 1  # bump when the extracted rows change, so old caches are rebuilt


def _after(text: str, marker: str) -> str:
    return text.split(marker, 1)[1] if marker in text else text


def _vitaminc(text: str) -> dict:
    evidence, claim = text.rsplit("\nClaim:", 1)
    return {"evidence": evidence.strip(), "claim": claim.strip()}


def _fever(text: str) -> dict:
    claim = _after(text, "the following claim was made:").split("\nQ:", 1)[0]
    return {"claim": claim.strip()}


def _hyperbaton(text: str) -> dict:
    match = re.fullmatch(r'.*?: a " (.*) " b " (.*) " \?', text.strip(), flags=re.S)
    if match is None:
        raise ValueError(f"unexpected hyperbaton input {text[:80]!r}")
    return {"option_a": match.group(1).strip(), "option_b": match.group(2).strip()}


def _metaphor(text: str) -> dict:
    sentence, paraphrase = text.split("<-->", 1)
    return {"sentence": sentence.strip(), "paraphrase": paraphrase.strip()}


_FALLACY_PREAMBLES = (
    "This AI is identifying whether statements contain fallacies. The AI responds with 'Valid' or 'Invalid' as appropriate.",
    "Do you think the following argument is 'Valid' or 'Invalid'?",
)


def _logical_fallacy(text: str) -> dict:
    for preamble in _FALLACY_PREAMBLES:
        text = text.replace(preamble, "")
    return {"argument": text.strip()}


def _formal_fallacy(text: str) -> dict:
    argument = text.split("\n Is the argument", 1)[0]
    return {"argument": argument.strip().strip('"').strip()}


def _movie_dialog(text: str) -> dict:
    conversation, question = text.split("-----", 1)
    match = re.search(r'sentences "(.*)" and "(.*)"\s*$', question, flags=re.S)
    if match is None:
        raise ValueError(f"unexpected movie_dialog question {question[:80]!r}")
    return {"conversation": conversation.strip(), "first": match.group(1).strip(), "second": match.group(2).strip()}


def _one_field(name: str) -> Callable[[str], dict]:
    return lambda text: {name: text.strip()}


@dataclass(frozen=True)
class BigBenchTask:
    """One allowed BIG-bench task: where its examples are and how an ``input`` becomes columns."""

    path: str  # the folder under bigbench/benchmark_tasks/
    columns: Callable[[str], dict]


BIGBENCH_TASKS: Mapping[str, BigBenchTask] = {
    "vitaminc_fact_verification": BigBenchTask("vitaminc_fact_verification", _vitaminc),
    "hyperbaton": BigBenchTask("hyperbaton", _hyperbaton),
    "fact_checker/fever": BigBenchTask("fact_checker/fever", _fever),
    "strategyqa": BigBenchTask("strategyqa", _one_field("question")),
    "movie_dialog_same_or_different": BigBenchTask("movie_dialog_same_or_different", _movie_dialog),
    "sports_understanding": BigBenchTask("sports_understanding", _one_field("statement")),
    "logical_fallacy_detection": BigBenchTask("logical_fallacy_detection", _logical_fallacy),
    "formal_fallacies_syllogisms_negation": BigBenchTask("formal_fallacies_syllogisms_negation", _formal_fallacy),
    "metaphor_boolean": BigBenchTask("metaphor_boolean", _metaphor),
}


def rows_from_task_json(name: str, task_json: Mapping) -> list[dict]:
    """Every example of a BIG-bench task as a row of columns plus ``label`` (the best-scored target)."""
    convert = BIGBENCH_TASKS[name].columns
    rows, seen = [], set()
    for example in task_json["examples"]:
        scores = example["target_scores"]
        best = max(scores.values())
        winners = [target for target, score in scores.items() if score == best]
        if len(winners) != 1 or example["input"] in seen:  # ties and repeated inputs can't be labelled/split cleanly
            continue
        seen.add(example["input"])
        rows.append({**convert(example["input"]), "label": winners[0]})
    return rows


def split_rows(rows: list[dict], seed: int = SPLIT_SEED) -> dict[str, list[dict]]:
    """Seeded, fixed splits: a fifth (≤ MAX_EVAL) each to validation and test, the rest (≤ MAX_TRAIN) to train."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(MAX_EVAL, len(rows) // 5)
    validation, test, train = order[:n_eval], order[n_eval:2 * n_eval], order[2 * n_eval:][:MAX_TRAIN]
    return {split: [rows[i] for i in index] for split, index in
            (("train", train), ("validation", validation), ("test", test))}


def rows_dir(name: str) -> Path:
    return assets.cache_dir() / "data" / "bigbench" / name.replace("/", "__")


def _complete(name: str) -> bool:
    meta = rows_dir(name) / "meta.json"
    if not meta.is_file():
        return False
    try:
        record = json.loads(meta.read_text())
    except ValueError:
        return False
    return record.get("format") == FORMAT_VERSION and record.get("sha256") == BIGBENCH_SDIST.sha256


def _write(name: str, task_json: Mapping) -> None:
    folder = rows_dir(name)
    build = folder.with_name(folder.name + ".partial")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    splits = split_rows(rows_from_task_json(name, task_json))
    for split, rows in splits.items():
        with open(build / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    meta = {"format": FORMAT_VERSION, "sha256": BIGBENCH_SDIST.sha256, "source": f"bigbench/benchmark_tasks/{name}/task.json",
            "seed": SPLIT_SEED, "rows": {split: len(rows) for split, rows in splits.items()}}
    (build / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    build.rename(folder)  # complete or absent: an interrupted extraction leaves only the .partial folder


def extract_all(archive: Path) -> None:
    """Extract every allowed task's rows from the archive in one streaming pass."""
    wanted = {f"bigbench/benchmark_tasks/{t.path}/task.json": name for name, t in BIGBENCH_TASKS.items()}
    found = set()
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            inner = member.name.split("/", 1)[-1]  # drop "bigbench-1.0.0/"
            if inner in wanted and member.isfile():
                _write(wanted[inner], json.load(tar.extractfile(member)))
                found.add(wanted[inner])
    missing = set(BIGBENCH_TASKS) - found
    if missing:
        raise assets.AssetUnavailable(f"{archive.name} has no task.json for {', '.join(sorted(missing))}")


def bigbench_files(name: str) -> dict[str, str]:
    """``{split: path}`` of an allowed BIG-bench task's extracted rows, fetching the archive on first use."""
    if name not in BIGBENCH_TASKS:
        raise ValueError(f"bigbench task {name!r} is not in the suite's allowed list: {', '.join(BIGBENCH_TASKS)}")
    if not all(map(_complete, BIGBENCH_TASKS)):  # one fetch extracts them all: never fetch twice
        print(f"fetching {BIGBENCH_SDIST.requirement}'s source archive (358 MB, once) for the offline suite; "
              "only the extracted rows of its allowed tasks are kept", flush=True)
        archive = assets.fetch(BIGBENCH_SDIST, progress=True)
        try:
            extract_all(archive)
        finally:
            archive.unlink(missing_ok=True)
    return {split: str(rows_dir(name) / f"{split}.jsonl") for split in ("train", "validation", "test")}


def suite_task_files() -> dict[str, Path]:
    """The packaged suite's task files by task name (reading none of their data)."""
    return {path.stem: path for path in sorted(SUITE_DIR.glob("*.yaml"))}
