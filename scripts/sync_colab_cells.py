"""Make every notebook a one-click Colab run, idempotently.

For each ``notebooks/0*.ipynb`` (whatever notebooks exist when it runs):

1. a markdown cell tagged ``colab-badge`` first: the "Open in Colab" badge for that notebook,
   opening it at the release tag :data:`nlu_helpers.colab.RELEASE`;
2. the install cell (tagged ``colab-install``) as the first code cell, with the source of
   :data:`nlu_helpers.colab.INSTALL_CELL`: a few lines that, on Colab only, install the package
   from that same tag and call :func:`nlu_helpers.colab.setup` (an older untagged cell starting
   "# Colab only" is taken over and replaced). Rerun this script after a version bump;
3. notebook 03 only: a code cell tagged ``preflight`` right after the cell that builds the
   SFT ``settings``: the memory check (:func:`nlu_helpers.architectures.preflight`) before
   any training.

Other cells keep their source; outputs and execution counts are cleared everywhere. A
notebook is written only when something changed, so a second run changes nothing.

    .venv/bin/python scripts/sync_colab_cells.py            # rewrite what needs it
    .venv/bin/python scripts/sync_colab_cells.py --check    # exit 1 if a notebook is not in sync
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package of this checkout, installed or not

from nlu_helpers.colab import INSTALL_CELL, badge_markdown  # noqa: E402

BADGE_TAG = "colab-badge"
INSTALL_TAG = "colab-install"
PREFLIGHT_TAG = "preflight"
LEGACY_INSTALL_PREFIX = "# Colab only"

PREFLIGHT_CELL = """\
# Before training: does it fit? The hardware, the profile suggested for it, and a memory estimate for this model,
# LoRA rank, batch and sequence length. A clear MemoryError here beats an out-of-memory crash minutes into training;
# on the CPU, or for an architecture nlu_helpers.architectures does not know (e.g. tiny-random), it only reports.
from nlu_helpers import architectures

fit = architectures.preflight(model, batch_size=settings.batch_size, seq_len=settings.max_length, lora_r=settings.lora_r,
                              target_modules=settings.lora_target_modules, load_in_4bit=settings.load_in_4bit,
                              gradient_checkpointing=settings.gradient_checkpointing)"""


def _is_anchor_03(cell: nbformat.NotebookNode) -> bool:
    return cell.cell_type == "code" and "settings = sft." in cell.source


# notebook name -> (preflight cell source, "insert after the first cell for which this is true")
PREFLIGHT: dict[str, tuple[str, Callable[[nbformat.NotebookNode], bool]]] = {
    "03_lora_sft": (PREFLIGHT_CELL, _is_anchor_03),
}


def _tags(cell: nbformat.NotebookNode) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _new_cell(nb: nbformat.NotebookNode, kind: str, source: str, tag: str) -> nbformat.NotebookNode:
    make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
    cell = make(source)
    cell.metadata["tags"] = [tag]
    if (nb.nbformat, nb.nbformat_minor) < (4, 5):
        cell.pop("id", None)  # cell ids arrived in nbformat 4.5; older notebooks must not carry them
    else:
        cell.id = tag  # a stable id (a random one would change the file on every run)
    return cell


def _set(cell: nbformat.NotebookNode, source: str, tag: str) -> None:
    cell.source = source
    tags = _tags(cell)
    if tag not in tags:
        cell.setdefault("metadata", {})["tags"] = tags + [tag]


def sync_notebook(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The notebook with badge, install cell (and preflight, where wanted) in place; no outputs."""
    cells = list(nb.cells)
    # 1. the badge, first (the tagged cell kept if there is one)
    badge = next((c for c in cells if BADGE_TAG in _tags(c)), None) or _new_cell(nb, "markdown", "", BADGE_TAG)
    cells = [c for c in cells if BADGE_TAG not in _tags(c)]
    _set(badge, badge_markdown(name), BADGE_TAG)
    # 2. the install cell: the tagged one, else the legacy one, else a new one; placed as the first code cell
    install = next((c for c in cells if INSTALL_TAG in _tags(c)), None)
    if install is None:
        install = next((c for c in cells if c.cell_type == "code" and c.source.lstrip().startswith(LEGACY_INSTALL_PREFIX)), None)
    if install is None:
        install = _new_cell(nb, "code", INSTALL_CELL, INSTALL_TAG)
    else:
        cells.remove(install)
        _set(install, INSTALL_CELL, INSTALL_TAG)
    first_code = next((i for i, c in enumerate(cells) if c.cell_type == "code"), len(cells))
    cells.insert(first_code, install)
    # 3. the preflight check
    if name in PREFLIGHT:
        source, is_anchor = PREFLIGHT[name]
        existing = next((c for c in cells if PREFLIGHT_TAG in _tags(c)), None)
        if existing is not None:
            _set(existing, source, PREFLIGHT_TAG)
        else:
            anchor = next((i for i, c in enumerate(cells) if is_anchor(c)), None)
            if anchor is None:
                raise ValueError(f"{name}: found no cell to put the preflight check after (the one building `settings`)")
            cells.insert(anchor + 1, _new_cell(nb, "code", source, PREFLIGHT_TAG))
    for cell in cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.cells = [badge, *cells]
    return nb


def sync_folder(folder: Path, *, write: bool = True) -> list[Path]:
    """Sync every ``0*.ipynb`` in ``folder``; returns the notebooks that were (or would be) changed."""
    changed = []
    for path in sorted(folder.glob("0*.ipynb")):
        before = path.read_text(encoding="utf-8")
        nb = sync_notebook(nbformat.reads(before, as_version=4), path.stem)
        nbformat.validate(nb)
        after = nbformat.writes(nb).rstrip("\n") + ("\n" if before.endswith("\n") else "")  # keep the file's last line as it was
        if after != before:
            changed.append(path)
            if write:
                path.write_text(after, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=str(ROOT / "notebooks"), help="notebooks folder (default: notebooks/)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a notebook is out of sync")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        parser.error(f"{folder} is not a folder")
    changed = sync_folder(folder, write=not args.check)
    for path in changed:
        print(f"{'out of sync' if args.check else 'updated'}: {path}")
    if not changed:
        print(f"all {len(list(folder.glob('0*.ipynb')))} notebooks in sync")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
