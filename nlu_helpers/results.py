"""Results files: what every notebook measured, in a form later notebooks and the runner read.

Layout inside a run's output folder::

    results/<name>.json              one record (task, split, model, mode, metrics, ...)
    results/<name>.predictions.jsonl per-example predictions, beside it
    results/<name>.log.jsonl         training logs (one JSON object per step)

Writes are atomic (temp file, then rename), so an interrupted notebook never leaves
a half-written record that a later notebook would trip over.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

RESULTS = "results"


def _safe(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.=-]+", "-", name).strip("-")
    if not cleaned:
        raise ValueError(f"result name {name!r} has no usable characters")
    return cleaned


def result_name(*parts: Any) -> str:
    """A file-name-safe name from parts, e.g. ``result_name("02", "sst2", "score", "k5")``."""
    return _safe("-".join(str(p) for p in parts if p not in (None, "")))


def write_atomic(path: Path, text: str) -> Path:
    """Write via a temp file and rename, so a reader (or a run killed mid-write) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a results file")


def save_result(record: dict, output_dir: str | Path, name: str, predictions: Iterable[dict] | None = None) -> Path:
    """Write one result record (and optionally its per-example predictions); returns the JSON path."""
    folder = Path(output_dir) / RESULTS
    path = folder / f"{_safe(name)}.json"
    if predictions is not None:
        lines = "".join(json.dumps(p, default=_jsonable) + "\n" for p in predictions)
        write_atomic(folder / f"{_safe(name)}.predictions.jsonl", lines)
    return write_atomic(path, json.dumps({"name": name, **record}, indent=2, default=_jsonable) + "\n")


def save_log(rows: Iterable[dict], output_dir: str | Path, name: str) -> Path:
    """Write a training log (one JSON object per step)."""
    lines = "".join(json.dumps(r, default=_jsonable) + "\n" for r in rows)
    return write_atomic(Path(output_dir) / RESULTS / f"{_safe(name)}.log.jsonl", lines)


def load_results(output_dir: str | Path) -> list[dict]:
    """Every result record of a run folder, sorted by file name."""
    folder = Path(output_dir) / RESULTS
    if not folder.exists():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def load_log(output_dir: str | Path, name: str) -> list[dict]:
    path = Path(output_dir) / RESULTS / f"{_safe(name)}.log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
