"""Regenerate docs/playground.png: the prompt-design playground in JupyterLab, as the README shows it.

    .venv/bin/python tests/browser/playground_png.py [--model embedded] [--example 3] [--k 2]

Runs notebook 01 in a real JupyterLab + Chromium (the browser tests' driver) on the CPU-demo
parameters with the answer-format comparison switched off (it is the slow part), picks an
example and k in the widget, presses Run and screenshots the panel. The default model is the
embedded SmolLM2-135M-Instruct, so the answer is a real one (the tests' tiny model writes junk).
A few minutes on 2 CPU cores; no network.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jlab_driver as driver  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")


def main(argv: list[str] | None = None) -> int:
    """Run notebook 01, drive the playground, save its screenshot; returns the exit status."""
    from playwright.sync_api import sync_playwright

    from nlu_helpers import runner

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--example", type=int, default=3)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "playground.png")
    args = parser.parse_args(argv)
    binary = driver.find_chromium()
    if binary is None:
        print(driver.INSTALL_HINT, file=sys.stderr)
        return 1
    source = ROOT / "notebooks" / "01_prompt_design.ipynb"
    with tempfile.TemporaryDirectory(prefix="playground-png-") as tmp:
        work = Path(tmp)
        parameters = runner.parameters_for(source, "cpu-demo", runner.load_profile("cpu-demo"),
                                           {"model": args.model, "format_rows": 0}, work / "run")
        lab = driver.start_lab(work / "jupyter")
        chromium = None
        try:
            driver.prepare_notebook(source, lab.root / "docs" / source.name, parameters)
            chromium = driver.start_chromium(binary, work / "chromium" / "profile")
            with sync_playwright() as playwright:
                browser = playwright.chromium.connect_over_cdp(chromium.ws_url, timeout=30_000)
                context = browser.new_context(viewport={"width": 1200, "height": 900}, device_scale_factor=1)
                page = context.new_page()
                page.set_default_timeout(30_000)
                notebook = driver.NotebookPage(page, lab, f"docs/{source.name}", work)
                notebook.open()
                started = time.monotonic()
                notebook.run_all(timeout=900)
                print(f"notebook 01 ran in {time.monotonic() - started:.0f} s")
                errors = driver.cell_errors(notebook.save())
                if errors:
                    print("\n\n".join(errors), file=sys.stderr)
                    return 1
                playground = driver.Playground(notebook)
                playground.choose(parameters["task"], args.example, args.k, examples=parameters["playground_rows"])
                playground.press_run(timeout=300)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                playground.panel.screenshot(path=str(args.output), timeout=30_000)
                context.close()
        finally:
            lab.stop()
            if chromium is not None:
                chromium.stop()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
