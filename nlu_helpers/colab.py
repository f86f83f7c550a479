"""Colab: the badge that opens a notebook there, the cell that installs the workbook, and a
run folder that survives a disconnect.

Every notebook starts with two cells written by ``scripts/sync_colab_cells.py`` from this
module: a markdown badge (:func:`badge_markdown`) and the install cell (:data:`INSTALL_CELL`).
On Colab the install cell pip-installs this repository with its pinned dependencies while
holding Colab's own torch where it is (a constraints file pins the installed version, so a
dependency that wanted another torch fails loudly instead of replacing it), mounts Google
Drive and moves into :func:`checkpoint_root`. The notebooks' relative ``output_dir``
(``runs/...``) then lies on Drive: after a disconnect, running the notebook again finds the
checkpoints and resumes. Anywhere else the cell does nothing.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

REPOSITORY = "nlu-workbook/nlu-workbook"
REPOSITORY_URL = f"https://github.com/{REPOSITORY}"
BRANCH = "main"
PIP_REQUIREMENT = f"nlu-helpers[gpu] @ git+{REPOSITORY_URL}"  # [gpu]: bitsandbytes, for 4-bit models on a T4
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
DRIVE = Path("/content/drive")  # where Colab mounts Google Drive
LOCAL = Path("/content")  # Colab's own disk: lost when the runtime goes
RUNS_FOLDER = "nlu-workbook"

INSTALL_CELL = f'''\
# Colab only: install the workbook from GitHub with its pinned dependencies, keeping Colab's own torch,
# and work in a folder on Google Drive, so a disconnect loses no checkpoint. Elsewhere this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import importlib, importlib.metadata, os, subprocess, tempfile

    requirement = os.environ.get("NLU_WORKBOOK_SOURCE", "{PIP_REQUIREMENT}")
    keep = []  # pip may not replace these: each is pinned to the version Colab has
    for name in ("torch", "torchvision", "torchaudio"):
        try:
            keep.append(f"{{name}}=={{importlib.metadata.version(name)}}")
        except importlib.metadata.PackageNotFoundError:
            pass
    constraints = os.path.join(tempfile.gettempdir(), "nlu-workbook-constraints.txt")
    with open(constraints, "w") as handle:
        handle.write("\\n".join(keep) + "\\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", constraints, requirement], check=True)
    importlib.invalidate_caches()
    from nlu_helpers.colab import checkpoint_root

    os.chdir(checkpoint_root(mount=True))  # relative output_dir ("runs/...") now lands on Drive
    print("working folder:", os.getcwd())'''


def colab_url(notebook: str) -> str:
    """The URL that opens ``notebooks/<notebook>.ipynb`` of the repository on Colab."""
    name = Path(notebook).name
    name = name if name.endswith(".ipynb") else f"{name}.ipynb"
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/notebooks/{name}"


def badge_markdown(notebook: str) -> str:
    """The "Open in Colab" badge for one notebook, as Markdown."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook)})"


def in_colab() -> bool:
    """Whether this kernel runs on Colab (Colab's runtime imports ``google.colab`` at start)."""
    return "google.colab" in sys.modules


def checkpoint_root(
    *, mount: bool = False, drive: str | Path | None = None, local: str | Path | None = None, folder: str = RUNS_FOLDER
) -> Path:
    """The folder runs should live in, so that a Colab disconnect loses no checkpoint.

    Google Drive when it is mounted (``<drive>/MyDrive/<folder>``; ``mount=True`` asks Colab
    to mount it, which shows Google's sign-in prompt); on Colab without Drive, the runtime's
    own disk (``/content/<folder>``, with a warning: it goes with the runtime); anywhere else
    the current folder, so relative ``output_dir`` values keep their usual meaning.
    """
    drive = Path(drive) if drive is not None else DRIVE
    if mount and in_colab() and not (drive / "MyDrive").is_dir():
        try:
            from google.colab import drive as colab_drive

            colab_drive.mount(str(drive))
        except Exception as error:  # noqa: BLE001 - declined, no Drive, or no Colab: fall back below, with a warning
            warnings.warn(f"Google Drive was not mounted ({error}); runs stay on the runtime's disk", stacklevel=2)
    if (drive / "MyDrive").is_dir():
        root = drive / "MyDrive" / folder
    elif in_colab():
        root = (Path(local) if local is not None else LOCAL) / folder
        warnings.warn(
            f"no Google Drive at {drive}: runs go to {root}, which is lost when the runtime disconnects; "
            "mount Drive (checkpoint_root(mount=True)) to keep checkpoints", stacklevel=2,
        )
    else:
        return Path.cwd()
    root.mkdir(parents=True, exist_ok=True)
    return root
