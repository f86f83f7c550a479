"""Drive JupyterLab in a real Chromium: start the server and the browser, open, run and read notebooks.

Everything here is bounded: each wait has a time-out, and the server and the browser are
processes this module starts in their own process groups and stops by their ids. Jupyter's
config, data and runtime folders all live under a temp folder the caller gives.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

INSTALL_HINT = (
    "Chromium is missing: install Debian's package with `apt-get update && apt-get install -y chromium` "
    "(or point $CHROMIUM at a Chromium binary). The browser tests need it; .ci/run installs it"
)
PLAYWRIGHT_HINT = (
    "Playwright's Python package is missing: run `bash scripts/setup-env.sh` (it installs the `dev` extra "
    "with the pinned playwright), or `.venv/bin/pip install -e '.[dev]'`"
)

# Headless, sandbox-less (root in a container), no GPU, no /dev/shm, no outside traffic.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
    "--disable-features=Translate,MediaRouter", "--mute-audio", "--hide-scrollbars",
    "--window-size=1400,1000", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
]

# JupyterLab user settings: no news pop-up over the widgets, every cell kept in the DOM
# (windowing would drop off-screen cells, and with them their outputs and prompts).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False,
    },
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

KERNEL_NAME = "python3"


def find_chromium() -> str | None:
    """The real Chromium binary: $CHROMIUM, or the one Debian's /usr/bin/chromium shell wrapper runs.

    The wrapper adds flags of its own and is not the process we want to own and stop.
    """
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for wrapper in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        try:
            text = Path(wrapper).read_text(errors="replace")
        except OSError:
            continue
        app = re.search(r"^APPNAME=(\S+)", text, re.M)
        libdir = re.search(r"^LIBDIR=(\S+)", text, re.M)
        if app and libdir:
            folder = libdir.group(1).replace("${APPNAME}", app.group(1)).replace("$APPNAME", app.group(1))
            candidate = os.path.join(folder, app.group(1))
            if os.access(candidate, os.X_OK):
                return candidate
    for candidate in ("/usr/lib/chromium/chromium", "/usr/lib/chromium-browser/chromium-browser"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    """A port free right now on 127.0.0.1 (the caller retries if it is taken before binding)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, read from /proc: the kernels the server started in their own sessions."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def stop_group(proc: subprocess.Popen, *, grace: float = 10.0) -> None:
    """SIGTERM the process group ``proc`` leads, SIGKILL what is left after ``grace`` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - a zombie we cannot reap
        pass


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.25, what: str = "a condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; ``TimeoutError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ----------------------------------------------------------------------------- the server

def install_kernelspec(data_dir: Path, name: str, *, display_name: str = "Python 3 (nlu-workbook .venv)",
                       env: Mapping[str, str] | None = None) -> Path:
    """Write a kernelspec running this interpreter (.venv's python) into ``data_dir``/kernels.

    Without a kernelspec of the notebook's name JupyterLab blocks on a kernel-picker dialog; an
    explicit one also avoids depending on `python` on PATH. ``env`` lets one kernel differ.
    """
    folder = data_dir / "kernels" / name
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display_name, "language": "python", "metadata": {"debugger": False},
    }
    if env:
        spec["env"] = dict(env)
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))
    return folder


@dataclass
class LabServer:
    """A running ``jupyter lab``: its process, address, token and folders."""

    proc: subprocess.Popen
    url: str                 # http://127.0.0.1:PORT/
    token: str
    root: Path               # the server's root_dir
    dirs: dict[str, Path]
    log: Path
    kernel_pids: set[int] = field(default_factory=set)

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 30) -> Any:
        """One REST call with the token; JSON in and out."""
        request = urllib.request.Request(
            self.url + path.lstrip("/"), method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read()
        return json.loads(data) if data else None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def remember_kernels(self) -> None:
        """Note the kernel processes now alive, so ``stop`` can kill any that outlive a shutdown."""
        self.kernel_pids.update(children(self.proc.pid))

    def shutdown_kernels(self) -> None:
        """Shut every session and kernel down through the REST API, so the next test starts clean."""
        self.remember_kernels()
        for listing, item in (("api/sessions", "api/sessions/{}"), ("api/kernels", "api/kernels/{}")):
            try:
                entries = self.api("GET", listing, timeout=10)
            except (urllib.error.URLError, OSError, ValueError):
                return
            for entry in entries:
                try:
                    self.api("DELETE", item.format(entry["id"]), timeout=30)
                except (urllib.error.URLError, OSError, ValueError):
                    pass

    def stop(self) -> None:
        """Shut kernels down, stop the server's process group, then kill leftover kernels by pid."""
        self.shutdown_kernels()
        stop_group(self.proc)
        for pid in self.kernel_pids:  # kernels run in their own sessions, outside the server's group
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def start_lab(workdir: Path, *, timeout: float = 120, extra_env: Mapping[str, str] | None = None) -> LabServer:
    """Start ``jupyter lab`` on 127.0.0.1 with a random port and token, every Jupyter folder under ``workdir``."""
    root = workdir / "root"
    dirs = {name: workdir / name for name in ("config", "data", "runtime", "ipython", "settings", "workspaces", "mpl")}
    for path in (root, *dirs.values()):
        path.mkdir(parents=True, exist_ok=True)
    for name, value in LAB_SETTINGS.items():
        target = dirs["settings"] / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(value))
    install_kernelspec(dirs["data"], KERNEL_NAME)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
        "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
        "IPYTHONDIR": str(dirs["ipython"]),
        "MPLCONFIGDIR": str(dirs["mpl"]),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        # jupyter_core prefers a virtualenv's share/jupyter over JUPYTER_DATA_DIR by default:
        # without this, .venv's own "python3" kernelspec would win over the one written above.
        "JUPYTER_PREFER_ENV_PATH": "0",
        **(extra_env or {}),
    }
    for name in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH"):
        env.pop(name, None)
    token = secrets.token_hex(24)
    log = workdir / "jupyter-lab.log"
    last_error = ""
    for _attempt in range(3):  # the free port can be taken between probing and binding
        port = free_port()
        cmd = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",  # root in CI containers
            "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--ServerApp.shutdown_no_activity_timeout=0", "--MappingKernelManager.cull_idle_timeout=0",
            "--KernelManager.shutdown_wait_time=1.0",  # a test's kernel gets 1 s to exit cleanly, then is killed
        ]
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        server = LabServer(proc, f"http://127.0.0.1:{port}/", token, root, dirs, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                server.api("GET", "api/status", timeout=5)
                return server
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.5)
        last_error = server.log_tail()
        stop_group(proc)
        if "already in use" not in last_error:
            break
    raise RuntimeError(f"jupyter lab did not answer within {timeout:.0f} s; its log ends with:\n{last_error}")


# ----------------------------------------------------------------------------- the browser

@dataclass
class Chromium:
    """The system Chromium, started by us (so we own its pid); Playwright attaches over CDP."""

    proc: subprocess.Popen
    ws_url: str
    profile: Path

    def stop(self) -> None:
        """Stop the browser's whole process group (renderers, GPU and zygote processes included)."""
        stop_group(self.proc, grace=5)


def start_chromium(binary: str, profile: Path, *, timeout: float = 60) -> Chromium:
    """Start Chromium headless with a fresh profile and remote debugging on a random port."""
    profile.mkdir(parents=True, exist_ok=True)
    log = profile.parent / "chromium.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([binary, *CHROMIUM_ARGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if port_file.exists():
            lines = port_file.read_text().split()
            if len(lines) >= 2:
                return Chromium(proc, f"ws://127.0.0.1:{lines[0]}{lines[1]}", profile)
        time.sleep(0.2)
    stop_group(proc, grace=2)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"Chromium ({binary}) did not start within {timeout:.0f} s; its log ends with:\n{tail}")


# ----------------------------------------------------------------------------- notebooks on disk

def prepare_notebook(source: Path, target: Path, parameters: Mapping[str, Any], *, kernel_name: str = KERNEL_NAME) -> None:
    """Write ``source`` to ``target`` with papermill's injected-parameters cell, as the runner would run it."""
    import nbformat
    from papermill.parameterize import parameterize_notebook

    nb = nbformat.read(source, as_version=4)
    nb.metadata["papermill"] = nbformat.NotebookNode()
    for cell in nb.cells:  # papermill reads every cell's tags
        cell.metadata.setdefault("tags", [])
    nb = parameterize_notebook(nb, dict(parameters), kernel_name=kernel_name, language="python")
    nb.metadata["kernelspec"] = {"name": kernel_name, "display_name": "Python 3", "language": "python"}
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def cell_errors(nb: Mapping) -> list[str]:
    """Every error output of a saved notebook, as 'cell N (source head): traceback' (ANSI colours removed)."""
    found = []
    for number, cell in enumerate(nb.get("cells", [])):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if output.get("output_type") == "error":
                head = "".join(cell.get("source", ""))[:120].replace("\n", " | ")
                trace = ANSI.sub("", "\n".join(output.get("traceback") or [f"{output.get('ename')}: {output.get('evalue')}"]))
                found.append(f"cell {number} ({head!r}) raised {output.get('ename')}: {output.get('evalue')}\n{trace}")
    return found


# ----------------------------------------------------------------------------- JupyterLab pages

def workspace_url(server: LabServer, path: str) -> str:
    """A fresh, reset workspace per opening, so no earlier layout reopens notebooks (and starts kernels)."""
    return f"{server.url}lab/workspaces/t-{uuid.uuid4().hex[:12]}/tree/{path}?reset&token={server.token}"


# The status bar's kernel item ("Python 3 (...) | Idle"); the toolbar says "idle" before a kernel exists.
_KERNEL_STATUS_JS = """() => {
    for (const el of document.querySelectorAll('#jp-main-statusbar .jp-StatusBar-TextItem')) {
        const m = el.textContent.match(/\\|\\s*(\\w[\\w ]*)\\s*$/);
        if (m) return m[1].trim();
    }
    return '';
}"""

# Per code cell: its index among all cells and its prompt ("[3]:", "[*]:", "[ ]:").
_PROMPTS_JS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell')).map((cell, i) => {
    if (!cell.classList.contains('jp-CodeCell')) return null;
    const p = cell.querySelector('.jp-InputArea-prompt');
    return [i, p ? p.textContent.trim() : ''];
}).filter(x => x)"""

# Records every distinct set of images each watched cell shows, with whether the cell was running.
_WATCH_IMAGES_JS = """(indices) => {
    const hash = (s) => { let h = 2166136261; for (let i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 16777619); } return (h >>> 0).toString(16) + ':' + s.length; };
    window.__imageLog = window.__imageLog || {};
    const cells = document.querySelectorAll('.jp-Notebook .jp-Cell');
    for (const i of indices) {
        const cell = cells[i];
        const log = window.__imageLog[i] = [];
        let last = '';
        const record = () => {
            const imgs = Array.from(cell.querySelectorAll('.jp-OutputArea-output img'));
            const fp = imgs.map(im => hash(im.src || '')).join('|');
            if (!fp || fp === last) return;
            last = fp;
            const p = cell.querySelector('.jp-InputArea-prompt');
            log.push({t: performance.now(), fp: fp, running: !!(p && p.textContent.includes('*'))});
        };
        new MutationObserver(record).observe(cell, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
    }
}"""


_WATCH_BUSY_JS = """() => {
    window.__sawBusy = false;
    if (window.__busyObserver) window.__busyObserver.disconnect();
    const bar = document.querySelector('#jp-main-statusbar');
    window.__busyObserver = new MutationObserver(() => {
        if (/\\|\\s*Busy\\s*$/m.test(bar.innerText)) window.__sawBusy = true;
    });
    window.__busyObserver.observe(bar, {subtree: true, childList: true, characterData: true});
}"""


class NotebookPage:
    """One notebook open in a fresh JupyterLab workspace, driven as a person would: menus, clicks, keys."""

    def __init__(self, page: Any, server: LabServer, path: str, artifacts: Path):
        self.page, self.server, self.path, self.artifacts = page, server, path, artifacts
        self.shots: list[Path] = []
        self.open_seconds = 0.0

    # -- reading the page
    def kernel_status(self) -> str:
        """The status bar's kernel state: "Idle", "Busy", "Starting", ... ("" before it shows)."""
        return self.page.evaluate(_KERNEL_STATUS_JS)

    def prompts(self) -> list[tuple[int, str]]:
        """(cell index, prompt) per code cell: "[*]:" is queued or running, "[3]:" done."""
        return [tuple(x) for x in self.page.evaluate(_PROMPTS_JS)]

    def cell(self, index: int) -> Any:
        """The Playwright locator of cell ``index`` (counting every cell, as in the .ipynb)."""
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def screenshot(self, stage: str, *, element: Any = None) -> Path:
        """Save a PNG of the page (or of ``element``) for this stage and remember it for the report."""
        path = self.artifacts / f"{len(self.shots):02d}-{stage}.png"
        try:
            (element or self.page).screenshot(path=str(path), timeout=15_000)
        except Exception as error:  # a screenshot is evidence, never the reason a test fails
            path.with_suffix(".txt").write_text(f"screenshot failed: {error}\n")
            return path
        self.shots.append(path)
        return path

    # -- actions
    def open(self, *, timeout: float = 120) -> None:
        """Open the notebook in a new workspace and wait until its kernel has started and is idle."""
        started = time.monotonic()
        self.page.goto(workspace_url(self.server, self.path), wait_until="domcontentloaded", timeout=60_000)
        self.page.locator(".jp-Notebook .jp-Cell").first.wait_for(state="attached", timeout=timeout * 1000)
        self.wait_idle(timeout=timeout, what="the kernel to start")
        self.open_seconds = time.monotonic() - started

    def wait_idle(self, *, timeout: float, settle: float = 0.5, what: str = "the kernel to be idle") -> None:
        """Wait until the status bar says Idle and still does ``settle`` seconds later."""
        def idle_twice() -> bool:
            if self.kernel_status() != "Idle":
                return False
            time.sleep(settle)
            return self.kernel_status() == "Idle"

        try:
            wait_for(idle_twice, timeout=timeout, what=what)
        except TimeoutError as error:
            raise TimeoutError(f"{error} (status bar: {self.kernel_status()!r})") from None

    def menu(self, top: str, item: str) -> None:
        """Click a main-menu entry (e.g. Run > Run All Cells)."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{re.escape(top)}$")).click(timeout=15_000)
        entry = self.page.locator(".lm-Menu-item:not(.lm-mod-hidden) .lm-Menu-itemLabel",
                                  has_text=re.compile(rf"^{re.escape(item)}$"))
        entry.first.click(timeout=15_000)

    def run_all(self, *, timeout: float, on_tick: Callable[[], None] | None = None) -> float:
        """Run > Run All Cells, then wait until no cell is queued or running and the kernel is idle.

        Returns the seconds it took. A cell error stops the run (JupyterLab aborts the queue),
        so "finished" means: nothing shows ``[*]`` and the kernel stays idle.
        """
        started = time.monotonic()
        self.menu("Run", "Run All Cells")
        wait_for(lambda: any("*" in p or re.search(r"\d", p) for _, p in self.prompts()), timeout=30,
                 what="Run All Cells to queue the cells")

        def finished() -> bool:
            if on_tick is not None:
                on_tick()
            status = self.kernel_status()
            if status in ("Dead", "Unknown"):
                raise RuntimeError(f"{self.path}: the kernel is {status} during Run All Cells (killed? out of memory?); "
                                   f"the server's log ends with:\n{self.server.log_tail()}")
            if any("*" in p for _, p in self.prompts()) or self.kernel_status() != "Idle":
                return False
            time.sleep(0.5)  # the kernel is idle for a moment between two cells
            return not any("*" in p for _, p in self.prompts()) and self.kernel_status() == "Idle"

        try:
            wait_for(finished, timeout=timeout, interval=0.5, what="Run All Cells to finish")
        except TimeoutError as error:
            running = [i for i, p in self.prompts() if "*" in p]
            raise TimeoutError(f"{error}; cells still queued or running: {running}; "
                               f"status bar: {self.kernel_status()!r}") from None
        return time.monotonic() - started

    def save(self, *, timeout: float = 60) -> dict:
        """File > Save Notebook, then read the saved notebook back through the contents API."""
        before = self.server.api("GET", f"api/contents/{self.path}?content=0")["last_modified"]
        self.menu("File", "Save Notebook")

        def saved() -> dict | None:
            model = self.server.api("GET", f"api/contents/{self.path}?content=0")
            return model if model["last_modified"] != before else None

        wait_for(saved, timeout=timeout, what="the notebook to be saved")
        return self.server.api("GET", f"api/contents/{self.path}")["content"]

    def watch_images(self, indices: list[int]) -> None:
        """Start recording each distinct image set that cells ``indices`` show (before running them)."""
        self.page.evaluate(_WATCH_IMAGES_JS, indices)

    def watch_busy(self) -> None:
        """Start noting whether the status bar shows Busy (a poll can miss a short busy spell)."""
        self.page.evaluate(_WATCH_BUSY_JS)

    def saw_busy(self) -> bool:
        """Whether the status bar showed Busy since ``watch_busy``."""
        return bool(self.page.evaluate("() => !!window.__sawBusy"))

    def image_log(self) -> dict[int, list[dict]]:
        """Per watched cell: each distinct image set it showed, in order, with ``running`` at that moment."""
        return {int(k): v for k, v in (self.page.evaluate("() => window.__imageLog || {}") or {}).items()}


# ----------------------------------------------------------------------------- the playground widget

# What the playground's output panel shows (nlu_helpers.playground.render_html), read as text.
_SHOWN_JS = """(panel) => {
    const out = panel.querySelector('.widget-html-content');
    const text = (css) => { const el = out && out.querySelector(css); return el ? el.textContent : null; };
    return {
        html: out ? out.innerHTML : '',
        prompt: text('.pg-prompt'), answer: text('.pg-answer code'), parsed: text('.pg-parsed code'),
        gold: text('.pg-gold code'), reward: text('.pg-reward code'), tokens: text('.pg-tokens code'),
    };
}"""


class Playground:
    """The ipywidgets panel of ``playground_widget`` in a notebook page, used with mouse and keyboard."""

    def __init__(self, notebook: NotebookPage):
        self.notebook = notebook
        page = notebook.page
        cell = page.locator(".jp-Notebook .jp-Cell").filter(has=page.locator("button.widget-button", has_text="Run"))
        count = cell.count()
        if count != 1:
            raise AssertionError(f"{notebook.path}: expected one playground widget (a Run button), found {count}")
        self.panel = cell.locator(".widget-vbox").first
        self.panel.scroll_into_view_if_needed()

    def shown(self) -> dict[str, str | None]:
        """The output panel's fields as text (``textContent``: the exact strings, unrendered)."""
        return self.panel.evaluate(_SHOWN_JS)

    def set_slider(self, label: str, value: int, maximum: int) -> None:
        """Type ``value`` into an IntSlider's readout once the kernel has set the slider's maximum."""
        slider = self.panel.locator(".widget-slider").filter(
            has=self.notebook.page.locator(".widget-label", has_text=re.compile(rf"^{re.escape(label)}$")))
        handle = slider.locator(".noUi-handle")
        wait_for(lambda: float(handle.get_attribute("aria-valuemax")) == maximum, timeout=30,
                 what=f"the {label!r} slider's maximum to become {maximum}")
        readout = slider.locator(".widget-readout")
        readout.click()
        readout.press("Control+A")
        readout.press_sequentially(str(value))
        readout.press("Enter")
        wait_for(lambda: float(handle.get_attribute("aria-valuenow")) == value, timeout=15,
                 what=f"the {label!r} slider to show {value}")

    def choose(self, task: str, example: int, k: int, *, examples: int, max_k: int = 5) -> None:
        """Pick the task in the dropdown, then the example and k; ``examples`` is that task's row count."""
        self.panel.locator(".widget-dropdown select").select_option(task)
        self.set_slider("example", example, examples - 1)
        self.set_slider("k shots", k, max_k)
        self.notebook.wait_idle(timeout=60, settle=0.3, what="the kernel to take the new widget values")

    def press_run(self, *, timeout: float = 90) -> dict[str, str | None]:
        """Click Run and wait until the kernel has handled it; returns what the panel then shows.

        Handled means: the output changed, or (same output again) the kernel went busy and is idle.
        ``TimeoutError`` if neither happens, e.g. when the callback raised (that goes to the log console).
        """
        before = self.shown()["html"]
        self.notebook.watch_busy()
        self.panel.locator("button.widget-button", has_text="Run").click()

        def handled() -> bool:
            if self.shown()["html"] != before:
                return True
            return self.notebook.saw_busy() and self.notebook.kernel_status() == "Idle"

        wait_for(handled, timeout=timeout, what="the kernel to handle the click on Run")
        self.notebook.wait_idle(timeout=60)
        return self.shown()
