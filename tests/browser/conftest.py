"""Fixtures for the browser tests: one JupyterLab server and one Chromium per session, a fresh page per test.

Both processes are started by us and stopped by their process ids here, whatever the tests do;
Jupyter's config, data, runtime and settings folders live in a temp folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import jlab_driver as driver

_ARTIFACTS: list[Path] = []


@pytest.fixture(scope="session")
def chromium_binary() -> str:
    """The real Chromium binary; a missing browser FAILS the suite (CI installs it), it never skips."""
    binary = driver.find_chromium()
    if binary is None:
        pytest.fail(driver.INSTALL_HINT, pytrace=False)
    return binary


@pytest.fixture(scope="session")
def sync_api() -> Any:
    """Playwright's sync API module; missing is a failure with the install command, not a skip."""
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail(driver.PLAYWRIGHT_HINT, pytrace=False)
    return sync_api


@pytest.fixture(scope="session")
def browser_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $BROWSER_ARTIFACTS (CI keeps it) or a pytest temp folder; printed at the end."""
    wanted = os.environ.get("BROWSER_ARTIFACTS")
    folder = Path(wanted).resolve() if wanted else tmp_path_factory.mktemp("browser-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    _ARTIFACTS.append(folder)
    return folder


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[driver.LabServer]:
    """JupyterLab on 127.0.0.1, random port and token; stopped (with its kernels) by pid at the end."""
    server = driver.start_lab(tmp_path_factory.mktemp("jupyter"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser(chromium_binary: str, sync_api: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The system Chromium (fresh profile) with Playwright attached over CDP; stopped by pid at the end."""
    chromium = driver.start_chromium(chromium_binary, tmp_path_factory.mktemp("chromium") / "profile")
    playwright = None
    try:
        playwright = sync_api.sync_playwright().start()
        connected = playwright.chromium.connect_over_cdp(chromium.ws_url, timeout=30_000)
        yield connected
        try:
            connected.close()
        except Exception:  # the process is killed below anyway
            pass
    finally:
        if playwright is not None:
            playwright.stop()
        chromium.stop()


@pytest.fixture
def open_notebook(lab: driver.LabServer, browser: Any, browser_artifacts: Path,
                  request: pytest.FixtureRequest) -> Iterator[Callable[[str], driver.NotebookPage]]:
    """Open a notebook (path under the server root) in a new browser context and a fresh workspace.

    Afterwards the context is closed and every kernel shut down, so no test sees another's kernel.
    """
    contexts: list[Any] = []
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in request.node.name)
    folder = browser_artifacts / safe
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)

    def opener(path: str) -> driver.NotebookPage:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        notebook = driver.NotebookPage(page, lab, path, folder)
        notebook.open()
        print(f"{path}: opened, kernel idle after {notebook.open_seconds:.1f} s")
        notebook.screenshot("opened")
        return notebook

    try:
        yield opener
    finally:
        for context in contexts:
            try:
                context.close()
            except Exception:
                pass
        lab.shutdown_kernels()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where the screenshots are, so a CI log points at them."""
    for folder in _ARTIFACTS:
        terminalreporter.write_line(f"browser test screenshots: {folder}")
