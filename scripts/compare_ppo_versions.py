"""Train the PPO of an earlier commit and today's side by side, same seed, and say whether they agree.

    .venv/bin/python scripts/compare_ppo_versions.py --rev 3a7938d --model tiny-random --steps 5

A refactor of ``nlu_helpers/ppo.py`` keeps behaviour when every logged number is identical and the
trained weights are bit-identical. The old module is loaded from ``git show REV:nlu_helpers/ppo.py``
(it must be importable against today's package: the 0.1 ppo.py is).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from nlu_helpers import data, ppo


def old_module(rev: str):
    source = subprocess.run(["git", "show", f"{rev}:nlu_helpers/ppo.py"], capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_ppo.py"
    path.write_text(source.replace("mini_batch_size", "batch_size").replace("grad_accum", "gradient_accumulation_steps"))
    spec = importlib.util.spec_from_file_location("old_ppo", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_ppo"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="3a7938d", help="the earlier commit (default: the last before the rewrite)")
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    old = old_module(args.rev)
    preset = "cpu-demo" if args.model == "embedded" else "smoke"
    rows = list(data.load_split("movie-snippets", "train", limit=200, shuffle_seed=0))
    before = old.PPOTrainer(args.model, "movie-snippets", rows, old.preset(preset), device="cpu")
    before.train(args.steps, progress=False)
    after = ppo.PPOTrainer(args.model, "movie-snippets", rows, ppo.preset(preset, prefix_cache=False), device="cpu")
    after.train(args.steps, progress=False)
    same = True
    for a, b in zip(before.history, after.history):
        differ = {k: (a[k], b.get(k)) for k in a if not k.startswith("seconds") and a[k] != b.get(k) and a[k] == a[k]}
        same &= not differ
        print(f"step {a['step']}: reward {a['reward']:+.4f} / {b['reward']:+.4f}", "identical" if not differ else differ)
    old_weights, new_weights = dict(before.ac.named_parameters()), dict(after.ac.named_parameters())
    bit_identical = all(torch.equal(old_weights[n], new_weights[n]) for n in old_weights)
    print("weights bit-identical:", bit_identical)
    sys.exit(0 if same and bit_identical else 1)


if __name__ == "__main__":
    main()
