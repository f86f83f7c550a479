"""Command line: ``python -m nlu_helpers setup`` and ``python -m nlu_helpers run --profile NAME``."""

from __future__ import annotations

import argparse
import sys
import time


def setup() -> None:
    """Fetch and prepare everything the offline default needs (idempotent, fast when done)."""
    from nlu_helpers import data, models
    from nlu_helpers.assets import AssetUnavailable, cache_dir
    from nlu_helpers.tasks import OFFLINE_TASK

    start = time.perf_counter()
    try:
        model_dir = models.embedded_model_dir()
        tiny_dir = models.tiny_model_dir()
        sizes = {split: len(data.load_split(OFFLINE_TASK, split)) for split in ("train", "validation", "test")}
    except AssetUnavailable as error:
        sys.exit(f"setup: {error}")
    print(f"setup: cache {cache_dir()}")
    print(f"setup: embedded model {model_dir}; tiny test model {tiny_dir}")
    print(f"setup: offline task {OFFLINE_TASK}: {sizes} ({time.perf_counter() - start:.1f} s)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nlu-workbook", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("setup", help="fetch the embedded model and the offline data set")
    run = commands.add_parser("run", help="execute the notebooks in order with papermill")
    run.add_argument("--profile", default="cpu-demo")
    run.add_argument("--output", default=None, help="run folder (default runs/<timestamp>-<profile>)")
    run.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its first unfinished notebook")
    run.add_argument("--only", nargs="*", default=None, help="notebook numbers or names to run")
    run.add_argument("--skip", nargs="*", default=None, help="notebook numbers or names to leave out")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="override a parameter")
    args = parser.parse_args(argv)
    if args.command == "setup":
        setup()
    else:
        from nlu_helpers import runner

        sys.exit(runner.main(args))


if __name__ == "__main__":
    main()
