"""Colab: the badge that opens a notebook there, the cell that installs the workbook, and a
run folder that survives a disconnect.

Every notebook starts with two cells written by ``scripts/sync_colab_cells.py`` from this
module: a markdown badge (:func:`badge_markdown`) and the install cell (:data:`INSTALL_CELL`).
Both point at one release, the git tag :data:`RELEASE` (``v`` + the package version): the
badge opens the notebook as it was at that tag and the cell installs the package from the
same tag, so notebook and package always match and a later push cannot change what a
Colab user gets. (The tag must exist on GitHub: tag the commit when the version changes.)

On Colab the cell pip-installs the package alone (``--no-deps``), then :func:`setup`
installs its dependencies, holding Colab's own torch where it is (a constraints file pins
the installed version, so a dependency that wanted another torch fails loudly instead of
replacing it; the other dependencies are the lower bounds in ``pyproject.toml``, not
pins), mounts Google Drive and moves into :func:`checkpoint_root`. The notebooks'
relative ``output_dir`` (``runs/...``) then lies on Drive: after a disconnect, running the
notebook again finds the checkpoints and resumes. Anywhere else the cell does nothing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from nlu_helpers import __version__

REPOSITORY = "nlu-workbook/nlu-workbook"
REPOSITORY_URL = f"https://github.com/{REPOSITORY}"
RELEASE = f"v{__version__}"  # the git tag the badge opens and the install cell installs
DISTRIBUTION = "nlu-helpers"
SOURCE = f"git+{REPOSITORY_URL}@{RELEASE}"
EXTRAS = ("gpu",)  # bitsandbytes, for 4-bit models on a T4
HELD = ("torch", "torchvision", "torchaudio")  # Colab's builds, matched to its CUDA: never replaced
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
DRIVE = Path("/content/drive")  # where Colab mounts Google Drive
LOCAL = Path("/content")  # Colab's own disk: lost when the runtime goes
RUNS_FOLDER = "nlu-workbook"

INSTALL_CELL = f'''\
# Colab only (elsewhere nothing happens): install the workbook at its release tag {RELEASE}, then setup() adds its
# dependencies without touching Colab's torch, mounts Google Drive and works in a folder there, so a disconnect loses no checkpoint.
import importlib, os, subprocess, sys
if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", os.environ.get("NLU_WORKBOOK_SOURCE", "{SOURCE}")], check=True)
    importlib.invalidate_caches(); from nlu_helpers.colab import setup; setup()'''


def colab_url(notebook: str) -> str:
    """The URL that opens ``notebooks/<notebook>.ipynb`` of the release :data:`RELEASE` on Colab."""
    name = Path(notebook).name
    name = name if name.endswith(".ipynb") else f"{name}.ipynb"
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{RELEASE}/notebooks/{name}"


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


def requirements(extras: tuple[str, ...] = EXTRAS, *, distribution: str = DISTRIBUTION, held: tuple[str, ...] = HELD) -> list[str]:
    """The installed package's dependencies (with ``extras``), as pip requirement strings, leaving
    out the ``held`` ones that are already installed (they stay as they are)."""
    from packaging.requirements import Requirement

    wanted = []
    for text in importlib.metadata.requires(distribution) or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is not None and not any(marker.evaluate({"extra": extra}) for extra in extras):
            continue
        if requirement.name in held and _installed(requirement.name):
            continue
        requirement.marker = None
        wanted.append(str(requirement))
    return wanted


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def install_dependencies(extras: tuple[str, ...] = EXTRAS, *, held: tuple[str, ...] = HELD) -> list[str]:
    """pip-install :func:`requirements` with every installed ``held`` package pinned by a constraints
    file, so pip may not replace Colab's torch; returns the pip command."""
    keep = [f"{name}=={version}" for name in held if (version := _installed(name))]
    constraints = os.path.join(tempfile.gettempdir(), "nlu-workbook-constraints.txt")
    with open(constraints, "w") as handle:
        handle.write("\n".join(keep) + "\n")
    command = [sys.executable, "-m", "pip", "install", "-q", "-c", constraints, *requirements(extras, held=held)]
    subprocess.run(command, check=True)
    importlib.invalidate_caches()
    return command


def setup(*, extras: tuple[str, ...] = EXTRAS, mount: bool = True) -> Path:
    """On Colab: install the dependencies (:func:`install_dependencies`), mount Google Drive and move
    into :func:`checkpoint_root`. Anywhere else: nothing. Returns the working folder."""
    if not in_colab():
        return Path.cwd()
    install_dependencies(extras)
    root = checkpoint_root(mount=mount)
    os.chdir(root)  # relative output_dir values ("runs/...") now land on Drive
    print(f"nlu-workbook {RELEASE}; working folder: {root}")
    return root
