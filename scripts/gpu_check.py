"""One prepared run for a GPU machine: install the carried wheels, run the CUDA tests, the benchmarks, DeepSpeed.

A GPU lease is short (here: minutes, no package index, 64 MiB of files per run), so everything
the workbook wants to know from a GPU is asked in one command, each part with its own time
budget inside one overall deadline, a failing part recorded and the next one run:

  install    the wheels scripts/gpu_wheels.py put in .whl/batch-*/ (into --site, put first on
             PYTHONPATH for every part) and the offline assets (tokenizer, data: no weights)
  env        versions, each carried package's requirements checked, the GPU, and its copy
             bandwidth and bf16 matmul rate measured (the rates the benchmarks' bounds use)
  tests      pytest -m cuda tests/test_cuda.py (JUnit XML with the recorded figures)
  bench-7b   benchmarks.run on a random-weight qwen2.5-7b in bf16 with the paper's PPO batch:
             PPO step by phase (and again with a static KV cache, compiled decoding), SFT step,
             evaluation examples/s, peak memory, bounds
  bench-t4   the T4 profile's shape: qwen2.5-0.5b (random weights) in fp16 with 4-bit weights
  deepspeed  a few SFT and PPO steps under the shipped ZeRO-2 and ZeRO-3 configs on one GPU through
             the workbook's command line (accelerate launch -m nlu_helpers sft|ppo), PPO under ZeRO-3
             resumed once from its checkpoint; losses and log rows compared with a plain run

Everything lands in --out (default $OUT, else runs/gpu-check): gpu-check.json (all figures),
gpu-check.txt (the short table, also printed last), gpu-check.log (every part's output) and
pytest-cuda.xml. The JSON and table are rewritten after every part, so a run cut short keeps
what it measured.

    python3 scripts/gpu_check.py                      # on the GPU machine (make gpu-check)
    .venv/bin/python scripts/gpu_check.py --dry-run   # here, on the CPU, tiny models: the same script end to end

``--dry-run`` runs every part on the CPU with the tiny model in place of the architectures
(CUDA-only tests stay skipped; 4-bit is left out), validates that the wheels install for the
GPU machine's Python, and installs only those this interpreter can use.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PARTS = ("install", "env", "tests", "bench-7b", "bench-t4", "deepspeed")
# seconds per part on the GPU; together more than the deadline: later parts get what is left
BUDGETS = {"install": 60, "env": 60, "tests": 180, "bench-7b": 260, "bench-t4": 150, "deepspeed": 200}
DEADLINE = 540  # the whole run, so it ends inside a 10-minute device call with time to copy the output back
PAPER_7B_STEP_S = 4.3  # the paper: one PPO step of a 7B model on one A100
GOAL_7B_STEP_S = 1.0  # issue 16's goal on one H100/H200-class GPU
TASK = "movie-snippets"
LOG_TAIL = 200_000  # characters of each part's output kept in gpu-check.log
DEVICE_PYTHON_TAGS = ["--python-version", "3.12", "--implementation", "cp"] + [
    a for n in (39, 35, 34, 31, 28, 27, 24, 17) for a in ("--platform", f"manylinux_2_{n}_x86_64")] + [
    "--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64"]


# =======================================================================================
# Running commands with a budget
# =======================================================================================


class Runner:
    """Runs the parts' commands: shared environment, one log, process groups killed at their limit."""

    def __init__(self, out: Path, deadline: float, env: dict[str, str]):
        self.out = out
        self.deadline = deadline  # the whole run's
        self.part_deadline = deadline  # the running part's (set by main)
        self.env = env
        self.env_figures: dict | None = None  # what the env part found (rates for the bounds)
        self.log_path = out / "gpu-check.log"
        self.log_path.write_text("")

    def left(self) -> float:
        """Seconds left to the running part."""
        return min(self.deadline, self.part_deadline) - time.monotonic()

    def total_left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, text: str) -> None:
        with open(self.log_path, "a") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")

    def run(self, command: list[str], limit: float, *, env: dict[str, str] | None = None, label: str = "") -> dict:
        """Run ``command`` for at most ``limit`` seconds (and never past the deadline); output to the log."""
        limit = max(1.0, min(limit, self.left() - 5))
        started = time.monotonic()
        self.log(f"\n===== {label or ' '.join(command[:6])} (limit {limit:.0f} s)\n$ {' '.join(command)}")
        print(f"[gpu-check] {label} (limit {limit:.0f} s)", flush=True)
        with tempfile.TemporaryFile(mode="w+") as output:
            process = subprocess.Popen(command, cwd=ROOT, env={**self.env, **(env or {})}, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True, text=True)
            try:
                code = process.wait(timeout=limit)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the whole group: benchmark workers, torchrun's children
                process.wait()
                code, timed_out = None, True
            output.seek(0)
            text = output.read()
        self.log(text[-LOG_TAIL:] + f"\n----- exit {code}{' (time limit)' if timed_out else ''} after {time.monotonic() - started:.1f} s")
        return {"code": code, "timed_out": timed_out, "seconds": round(time.monotonic() - started, 1), "tail": text[-3000:]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _failure(result: dict) -> str:
    if result["timed_out"]:
        return f"time limit after {result['seconds']} s"
    lines = [line.strip() for line in result["tail"].splitlines() if line.strip()]
    # the cause, not the launcher's summary of it (torchrun's ChildFailedError, "... FAILED")
    errors = [line for line in lines if re.search(r"(\w+(Error|Exception)\b:|error:)", line) and "ChildFailedError" not in line]
    errors = errors or [line for line in lines if "FAILED" in line]
    return f"exit {result['code']}: " + (errors[-1] if errors else (lines[-1] if lines else "no output"))[:400]


# =======================================================================================
# install
# =======================================================================================


def _compatible(wheel: Path) -> bool:
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    supported = set(sys_tags())
    return any(tag in supported for tag in parse_wheel_filename(wheel.name)[3])


def _installed(project: str) -> str | None:
    import importlib.metadata as metadata

    try:
        return metadata.version(project)
    except metadata.PackageNotFoundError:
        return None


def unmet_requirements(site: str | None, path: list[str] | None = None) -> list[tuple[str, str, str | None]]:
    """(carried distribution, requirement, version found) for each requirement of a wheel installed in ``site``
    that the interpreter (``path``: its sys.path) does not satisfy."""
    import importlib.metadata as metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    if not site:
        return []
    search = path if path is not None else sys.path
    environment = {**default_environment(), "extra": ""}
    found = []
    for dist in metadata.distributions(path=[site]):
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            have = next((d.version for d in metadata.distributions(name=requirement.name, path=search)), None)
            if have is None or not requirement.specifier.contains(have, prereleases=True):
                found.append((f"{dist.metadata['Name']} {dist.version}", str(requirement), have))
    return found


def part_install(args: argparse.Namespace, runner: Runner) -> dict:
    """Install what this interpreter needs from the carried batches into --site; unpack the assets."""
    from packaging.specifiers import SpecifierSet
    from packaging.utils import parse_wheel_filename

    folder = Path(args.wheels)
    figures: dict[str, Any] = {"site": str(args.site), "installed": [], "kept": [], "not_for_this_python": []}
    manifest_file = folder / "manifest.json"
    hedges = {}
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text())
        hedges = {w["file"]: w["install_if_missing"] for b in manifest["batches"] for w in b["wheels"] if w.get("install_if_missing")}
        figures["manifest_batches"] = [b["name"] for b in manifest["batches"]]
    wheels = sorted(folder.glob("batch-*/*.whl"))
    figures["carried_batches"] = sorted({w.parent.name for w in wheels})
    if not wheels:
        figures["note"] = f"no wheels under {folder}/batch-*/: using this interpreter's packages as they are"
    chosen = []
    for wheel in wheels:
        project, version, _, _ = parse_wheel_filename(wheel.name)
        have = _installed(str(project))
        if not _compatible(wheel):
            figures["not_for_this_python"].append(wheel.name)
        elif have == str(version):
            figures["kept"].append(f"{project} {have} (same version here)")
        elif wheel.name in hedges and have is not None and SpecifierSet(hedges[wheel.name]).contains(have, prereleases=True):
            figures["kept"].append(f"{project} {have} (satisfies {hedges[wheel.name]})")
        else:
            chosen.append(wheel)
            figures["installed"].append(f"{project} {version}" + (f" (was {have})" if have else ""))
    if args.dry_run and wheels:
        # what the GPU machine will do, checked here: every carried wheel installs for its Python and platform
        check = runner.run([PYTHON, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", "--only-binary=:all:",
                            "--target", tempfile.mkdtemp(prefix="tags-", dir=args.work), *DEVICE_PYTHON_TAGS,
                            *map(str, wheels)], 120, label="install: device tags")
        figures["device_install_check"] = "ok" if check["code"] == 0 else _failure(check)
        if check["code"] != 0:
            raise RuntimeError(f"the carried wheels do not install for the GPU machine's Python: {figures['device_install_check']}")
    if chosen:
        result = runner.run([PYTHON, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                             "--upgrade", "--target", str(args.site), *map(str, chosen)], runner.left(), label="install: pip")
        if result["code"] != 0:
            raise RuntimeError(f"pip install failed: {_failure(result)}")
    if args.dry_run:
        # here only: what the GPU machine's image has but this interpreter lacks (deepspeed's einops, ninja, ...), from the index
        missing = sorted({requirement for _, requirement, _ in unmet_requirements(str(args.site), [str(args.site), *sys.path])})
        if missing:
            result = runner.run([PYTHON, "-m", "pip", "install", "-q", "--no-deps", "--target", str(args.site), *missing],
                                runner.left(), label="install: what the device image has")
            figures["installed_from_index_for_the_dry_run"] = missing if result["code"] == 0 else _failure(result)
    assets = folder / "assets" / "nlu-workbook-assets.tar.gz"
    if assets.is_file() and not args.keep_cache:
        cache = Path(args.site).parent / "nlu-workbook-cache"
        cache.mkdir(parents=True, exist_ok=True)
        with tarfile.open(assets) as archive:
            archive.extractall(cache, filter="data")
        runner.env["NLU_WORKBOOK_CACHE"] = str(cache)
        figures["assets"] = f"{assets} -> {cache} (NLU_WORKBOOK_CACHE)"
    return figures


# =======================================================================================
# env: versions, requirements, the GPU and its rates (runs as a subprocess: --probe)
# =======================================================================================

PROBED = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "deepspeed", "tokenizers",
          "huggingface-hub", "safetensors", "pyarrow", "numpy")


def probe(site: str | None) -> dict:
    """What the parts will run with (printed as JSON by ``--probe``)."""
    import importlib
    import importlib.metadata as metadata

    figures: dict[str, Any] = {"python": sys.version.split()[0], "versions": {}, "imports": {}, "unmet": []}
    for name in PROBED:
        try:
            dist = metadata.distribution(name)
            figures["versions"][name] = dist.version + (" (carried)" if site and str(dist.locate_file("")).startswith(site) else "")
        except metadata.PackageNotFoundError:
            figures["versions"][name] = None
    for module in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "deepspeed", "nlu_helpers"):
        try:
            importlib.import_module(module)
            figures["imports"][module] = "ok"
        except Exception as error:  # noqa: BLE001 - recorded, the parts decide what matters
            figures["imports"][module] = f"{type(error).__name__}: {str(error)[:300]}"
    figures["unmet"] = [f"{dist} needs {requirement}; found {have}" for dist, requirement, have in unmet_requirements(site)]
    import torch

    figures["cuda"] = torch.cuda.is_available()
    figures["torch_cuda"] = torch.version.cuda
    if figures["cuda"]:
        props = torch.cuda.get_device_properties(0)
        figures["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                          "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
                          "bf16": torch.cuda.is_bf16_supported(including_emulation=False)}
        figures["rates"] = measure_rates()
    return figures


def measure_rates() -> dict:
    """The two ceilings the bounds divide by, measured: a device copy (bytes read + written) and a bf16 matmul."""
    import torch

    def timed(function: Callable[[], Any], repeats: int) -> float:
        for _ in range(3):
            function()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(repeats):
            start.record()
            function()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return sorted(times)[len(times) // 2]

    source = torch.randn(2**28, device="cuda")  # 1 GiB of fp32, random (never time zeros)
    target = torch.empty_like(source)
    copy_s = timed(functools.partial(target.copy_, source), 10)
    rates = {"copy_bytes_per_s": 2 * source.numel() * source.element_size() / copy_s}
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        b = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        rates[f"{name}_matmul_flops"] = 2 * 8192**3 / timed(functools.partial(torch.matmul, a, b), 10)
    return rates


def part_env(args: argparse.Namespace, runner: Runner) -> dict:
    result = runner.run([PYTHON, str(Path(__file__).resolve()), "--probe", "--site", str(args.site)], runner.left(), label="env")
    if result["code"] != 0:
        raise RuntimeError(_failure(result))
    figures = json.loads(result["tail"].strip().splitlines()[-1])
    if not args.dry_run and not figures["cuda"]:
        raise RuntimeError("no CUDA GPU visible to torch: the GPU parts cannot run (use --dry-run on a CPU)")
    bad = {k: v for k, v in figures["imports"].items() if v != "ok"}
    if bad:
        figures["import_errors"] = bad
    return figures


# =======================================================================================
# tests
# =======================================================================================


def part_tests(args: argparse.Namespace, runner: Runner) -> dict:
    xml = runner.out / "pytest-cuda.xml"
    env = {"NLU_GPU_CHECK_ON_CPU": "1"} if args.dry_run else {}
    result = runner.run([PYTHON, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-rfEs", "-p", "no:cacheprovider",
                         "-o", "junit_family=legacy", f"--junitxml={xml}"], runner.left(), env=env, label="tests")
    figures = read_junit(xml) if xml.is_file() else {}
    if result["timed_out"] or not figures:
        raise RuntimeError(_failure(result))
    if result["code"] not in (0, 5):
        figures["error"] = f"{figures.get('failed', '?')} failed: " + ", ".join(figures.get("failures", {}))
    return figures


def read_junit(path: Path) -> dict:
    """Counts, each test's outcome and recorded properties, failure messages (shortened)."""
    root = ElementTree.parse(path).getroot()
    figures: dict[str, Any] = {"passed": 0, "failed": 0, "skipped": 0, "tests": {}, "failures": {}}
    for case in root.iter("testcase"):
        name = case.get("name")
        outcome = "passed"
        for kind in ("failure", "error"):
            node = case.find(kind)
            if node is not None:
                outcome = "failed"
                figures["failures"][name] = (node.get("message") or "")[:500]
        if case.find("skipped") is not None:
            outcome = "skipped"
        figures[outcome] += 1
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        figures["tests"][name] = {"outcome": outcome, "seconds": float(case.get("time") or 0), **properties}
    return figures


# =======================================================================================
# benchmarks
# =======================================================================================


def bench_worker(spec: dict) -> None:
    """One benchmarks.run part in this process, optionally with every model load a 4-bit one (``--bench-worker``)."""
    sys.path.insert(0, str(ROOT))
    from nlu_helpers import models

    if spec.get("four_bit"):
        models.load_model = functools.partial(models.load_model, load_in_4bit=True)
    from benchmarks import run

    run.main(spec["args"])


def make_random_folder(name: str, folder: str, dtype: str) -> None:
    """A random-weight architecture saved as a model folder with the embedded tokenizer (4-bit loading needs files)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import run
    from nlu_helpers import models

    tokenizer = models.load_tokenizer(models.EMBEDDED_MODEL)
    device = models.pick_device("auto")
    model = run.random_model(name, device=device, dtype=models.pick_dtype(dtype, device), vocab_size=len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def run_benchmark(args: argparse.Namespace, runner: Runner, label: str, model: str, base_args: list[str],
                  parts: list[str], *, four_bit: bool = False) -> dict:
    """benchmarks.run once per part (each its own process and time share); the figures of each, merged."""
    figures: dict[str, Any] = {"model": model, "four_bit": four_bit, "parts": {}, "errors": {}}
    rates = (runner.env_figures or {}).get("rates")
    extra = []
    if rates:
        extra = ["--bandwidth-tbs", f"{rates['copy_bytes_per_s'] / 1e12:.3f}",
                 "--peak-tflops", f"{rates['bf16_matmul_flops'] / 1e12:.1f}"]
        figures["rates"] = "measured by env"
    weights = {part: 2.0 if part == "ppo" and "--static-cache" in base_args else 1.0 for part in parts}  # PPO runs twice then
    for i, part in enumerate(parts):
        share = runner.left() * weights[part] / sum(weights[p] for p in parts[i:]) if runner.left() > 0 else 0
        if share < 20:
            figures["errors"][part] = "not run: out of time"
            continue
        target = Path(tempfile.mkdtemp(prefix=f"bench-{label}-", dir=args.work)) / f"{part}.json"
        bench_args = ["--model", model, *base_args, *extra, "--parts", part, "--json", str(target), "--in-process"]
        result = runner.run([PYTHON, str(Path(__file__).resolve()), "--bench-worker",
                             json.dumps({"four_bit": four_bit, "args": bench_args})], share, label=f"{label} {part}")
        if result["code"] == 0 and target.is_file():
            record = json.loads(target.read_text())
            figures["parts"][part] = record[part]
            figures.setdefault("meta", record["meta"])
            figures.setdefault("bounds", {}).update({k: v for k, v in (record.get("bounds") or {}).items() if v})
            figures.setdefault("model_info", record.get("model"))
        else:
            figures["errors"][part] = _failure(result)
    if not figures["parts"]:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in figures["errors"].items()))
    if not figures["errors"]:
        figures.pop("errors")
    return figures


def part_bench_7b(args: argparse.Namespace, runner: Runner) -> dict:
    if args.dry_run:
        return run_benchmark(args, runner, "bench-7b", "tiny-random", ["--preset", "quick", "--device", "cpu", "--static-cache"],
                             ["ppo", "sft", "eval"])
    # --static-cache: the PPO part runs again with a fixed-size KV cache, which transformers compiles (CUDA graphs)
    return run_benchmark(args, runner, "bench-7b", "qwen2.5-7b",
                         ["--preset", "paper", "--dtype", "bf16", "--warmup", "1", "--steps", "2", "--sft-steps", "3",
                          "--eval-rows", "64", "--static-cache"], ["ppo", "sft", "eval"])


def part_bench_t4(args: argparse.Namespace, runner: Runner) -> dict:
    if args.dry_run:  # fp16 on the CPU; no 4-bit there
        figures = run_benchmark(args, runner, "bench-t4", "tiny-random", ["--preset", "quick", "--device", "cpu", "--dtype", "fp16"],
                                ["ppo", "sft", "eval"])
        figures["note"] = "dry run: fp16 on the CPU, no 4-bit (bitsandbytes' 4-bit needs CUDA)"
        return figures
    folder = args.work / "qwen2.5-0.5b-random"
    if not (folder / "config.json").is_file():
        result = runner.run([PYTHON, str(Path(__file__).resolve()), "--make-random-folder", "qwen2.5-0.5b", str(folder), "fp16"],
                            90, label="bench-t4 model folder")
        if result["code"] != 0:
            raise RuntimeError(f"writing the random qwen2.5-0.5b folder failed: {_failure(result)}")
    figures = run_benchmark(args, runner, "bench-t4", str(folder),
                            ["--preset", "cpu-demo", "--dtype", "fp16", "--warmup", "1", "--steps", "2", "--sft-steps", "3",
                             "--eval-rows", "64"], ["ppo", "sft", "eval"], four_bit=True)
    figures["note"] = "qwen2.5-0.5b architecture, random weights, fp16 compute, 4-bit (nf4) weights: the colab-t4 profile's shape"
    return figures


# =======================================================================================
# deepspeed
# =======================================================================================

SFT_ARGS = ["--model", "tiny-random", "--task", TASK, "--train-limit", "32", "--max-steps", "4", "--batch-size", "4",
            "--learning-rate", "1e-2", "--lora-dropout", "0", "--save-steps", "1000"]
PPO_ARGS = ["--model", "tiny-random", "--task", TASK, "--preset", "smoke", "--train-limit", "32", "--lora-dropout", "0",
            "--checkpoint-every", "2"]
PPO_KEYS = ("reward", "kl", "entropy", "policy_loss", "value_loss")
TOLERANCE = 0.02  # bf16: absolute and relative, on losses of order 0.01-10


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(1.0, abs(b))


def part_deepspeed(args: argparse.Namespace, runner: Runner) -> dict:
    work = Path(tempfile.mkdtemp(prefix="deepspeed-", dir=args.work))
    device = ["--device", "cpu"] if args.dry_run else []
    env = {"ACCELERATE_USE_CPU": "true"} if args.dry_run else {}
    configs = {stage: ROOT / "nlu_helpers" / "accelerate_configs" / f"deepspeed_zero{stage}.yaml" for stage in (2, 3)}
    figures: dict[str, Any] = {"tolerance": TOLERANCE, "runs": {}}

    def sft_losses(name: str) -> list[float] | None:
        path = work / name / "adapters" / f"sft-{TASK}" / "training.json"
        return [loss for _, loss in json.loads(path.read_text())["losses"]] if path.is_file() else None

    def ppo_log(name: str) -> list[dict] | None:
        folder = work / name / "checkpoints" / f"ppo-{TASK}"
        if (folder / "state.json").is_file():
            return json.loads((folder / "state.json").read_text()).get("history")
        return None

    def launch(name: str, kind: str, extra: list[str], config: Path | None, *, steps: int | None = None) -> bool:
        """``python -m nlu_helpers sft|ppo`` (the workbook's command line), under ``accelerate launch`` with ``config``."""
        options = device + extra + ["--output-dir", str(work / name), "--debug"]  # --debug: tracebacks into the log
        if config is None:
            command = [PYTHON, "-m", "nlu_helpers", kind, *options]
        else:
            command = [PYTHON, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "1",
                       "--main_process_port", str(_free_port()), "-m", "nlu_helpers", kind, *options]
        label = f"{name}{f' to step {steps}' if steps else ''}"
        share = min(90.0 * args.budget_scale, runner.left() - 5)
        if share < 15:
            figures["runs"][label] = "not run: out of time"
            return False
        result = runner.run(command, share, env=env, label=f"deepspeed {label}")
        made = sft_losses(name) if kind == "sft" else ppo_log(name)
        done = result["code"] == 0 and made is not None and (steps is None or len(made) == steps)
        figures["runs"][label] = "ok" if done else (_failure(result) if result["code"] != 0 else
                                                    f"exit 0 but no {'training.json' if kind == 'sft' else 'checkpoint history'} "
                                                    f"of {steps or 'the'} steps under {work / name}")
        return done

    launch("plain-sft", "sft", SFT_ARGS, None)
    launch("plain-ppo", "ppo", PPO_ARGS + ["--ppo-steps", "4"], None, steps=4)
    plain_sft, plain_ppo = sft_losses("plain-sft"), ppo_log("plain-ppo")
    for stage, config in configs.items():
        name = f"zero{stage}"
        launch(f"{name}-sft", "sft", SFT_ARGS, config)
        if stage == 3:  # resumed once: ZeRO-3, where the weights are sharded and must be gathered to save and load
            first = launch(f"{name}-ppo", "ppo", PPO_ARGS + ["--ppo-steps", "2"], config, steps=2)
            second = launch(f"{name}-ppo", "ppo", PPO_ARGS + ["--ppo-steps", "4"], config, steps=4) if first else False
        else:
            second = False
            launch(f"{name}-ppo", "ppo", PPO_ARGS + ["--ppo-steps", "4"], config, steps=4)
        result: dict[str, Any] = {}
        losses = sft_losses(f"{name}-sft")
        if losses and plain_sft:
            result["sft_losses"] = {"plain": plain_sft, name: losses}
            result["sft_equal"] = len(losses) == len(plain_sft) and all(_close(a, b) for a, b in zip(losses, plain_sft))
        log = ppo_log(f"{name}-ppo")
        if log:
            result["ppo_steps"] = len(log)
            result["ppo_resumed_at_step"] = 2 if second else None
        if log and plain_ppo:
            result["ppo_abs_diff_by_step"] = {k: [round(abs(a[k] - b[k]), 5) for a, b in zip(log, plain_ppo)] for k in PPO_KEYS}
            result["ppo_equal"] = len(log) == len(plain_ppo) and all(_close(a[k], b[k]) for a, b in zip(log, plain_ppo) for k in PPO_KEYS)
        figures[name] = result
    failed = [k for k, v in figures["runs"].items() if v != "ok"]
    unequal = [f"{name} {what}" for name in ("zero2", "zero3") for what in ("sft_equal", "ppo_equal")
               if figures.get(name, {}).get(what) is False]
    if failed or unequal:
        figures["error"] = "; ".join(filter(None, ["failed: " + ", ".join(failed) if failed else "",
                                                   "not equal to the plain run: " + ", ".join(unequal) if unequal else ""]))
    return figures


# =======================================================================================
# The run and its table
# =======================================================================================

PART_FUNCTIONS = {"install": part_install, "env": part_env, "tests": part_tests, "bench-7b": part_bench_7b,
                  "bench-t4": part_bench_t4, "deepspeed": part_deepspeed}


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def bench_lines(name: str, figures: dict) -> list[str]:
    lines = []
    parts = figures.get("parts", {})
    ppo = parts.get("ppo")
    if ppo:
        phases = ", ".join(f"{k} {_f(v['median_s'])}" for k, v in ppo["phases"].items())
        lines.append(f"  {name} ppo: {_f(ppo['median_step_s'])} s/step ({ppo['samples_per_step']} samples; {phases}); "
                     f"peak {_f(ppo['peak_gib'])} GiB")
        static = ppo.get("static_cache")
        if static:
            phases = ", ".join(f"{k} {_f(v['median_s'])}" for k, v in static["phases"].items())
            lines.append(f"  {name} ppo, static cache: {_f(static['median_step_s'])} s/step ({phases}); first rollout "
                         f"{_f(static['first_rollout_s'])} s (compiling); same samples as the growing cache: "
                         f"{100 * static['same_samples']:.0f}% of {static['rows_compared']}")
    sft = parts.get("sft")
    if sft:
        lines.append(f"  {name} sft: {_f(sft['steps_per_s'], 3)} steps/s ({sft['sequences_per_step']} seq/step), "
                     f"{_f(sft['tokens_per_s'], 0)} tokens/s, peak {_f(sft['peak_gib'])} GiB")
    ev = parts.get("eval")
    if ev:
        lines.append(f"  {name} eval: generate {_f(ev['generate']['examples_per_s'], 1)} ex/s, score "
                     f"{_f(ev['score']['examples_per_s'], 1)} ex/s, peak {_f(ev['peak_gib'])} GiB")
    bounds = figures.get("bounds") or {}
    for key, label in (("decode", "rollout"), ("decode_static", "rollout, static cache,")):
        if key in bounds:
            lines.append(f"  {name} {label} at {100 * bounds[key]['fraction_of_bound']:.1f}% of its bandwidth bound "
                         f"({_f(bounds[key]['generation_bound_s'], 3)} s bound vs {_f(bounds[key]['generation_measured_s'], 3)} s)")
    if "update" in bounds:
        lines.append(f"  {name} update MFU {100 * bounds['update']['mfu']:.1f}% (6N), {100 * bounds['update']['mfu_lora_4n']:.1f}% (4N)")
    for part, error in (figures.get("errors") or {}).items():
        lines.append(f"  {name} {part}: FAILED {error}")
    return lines


def format_table(record: dict) -> str:
    meta = record["meta"]
    lines = [f"gpu-check {'(dry run, CPU) ' if meta['dry_run'] else ''}{meta['started']}: {meta.get('gpu') or meta.get('machine')}",
             f"{'part':<11}{'status':<10}{'seconds':>8}  note"]
    for name in meta["parts"]:
        part = record["parts"].get(name)
        if part is None:
            lines.append(f"{name:<11}{'pending':<10}{'-':>8}")
            continue
        note = part.get("error") or ""
        if name == "tests" and "passed" in part.get("figures", {}):
            t = part["figures"]
            note = f"{t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped" + (f"; failed: {', '.join(t['failures'])}" if t["failures"] else "")
        elif name == "env" and part.get("figures"):
            e = part["figures"]
            note = f"torch {e['versions'].get('torch')}, transformers {e['versions'].get('transformers')}, " \
                   f"trl {e['versions'].get('trl')}, bnb {e['versions'].get('bitsandbytes')}, deepspeed {e['versions'].get('deepspeed')}"
            if e.get("unmet"):
                note += f"; unmet requirements: {len(e['unmet'])}"
        elif name == "install" and part.get("figures"):
            note = f"{len(part['figures']['installed'])} installed, {len(part['figures']['kept'])} kept"
        lines.append(f"{name:<11}{part['status']:<10}{part['seconds']:>8.1f}  {note[:160]}")
    env = (record["parts"].get("env") or {}).get("figures") or {}
    if env.get("rates"):
        r = env["rates"]
        lines.append(f"  rates: copy {r['copy_bytes_per_s'] / 1e12:.2f} TB/s, bf16 matmul {r['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s, "
                     f"fp16 {r['fp16_matmul_flops'] / 1e12:.0f} TFLOP/s")
    for name in ("bench-7b", "bench-t4"):
        figures = (record["parts"].get(name) or {}).get("figures")
        if figures:
            lines += bench_lines(name, figures)
    ppo7b = (((record["parts"].get("bench-7b") or {}).get("figures") or {}).get("parts") or {}).get("ppo")
    if ppo7b and not meta["dry_run"]:
        best = min([ppo7b["median_step_s"]] + ([ppo7b["static_cache"]["median_step_s"]] if ppo7b.get("static_cache") else []))
        lines.append(f"  7B PPO step: {best:.2f} s here (goal < {GOAL_7B_STEP_S} s) vs {PAPER_7B_STEP_S} s in the paper (one A100)")
    ds = (record["parts"].get("deepspeed") or {}).get("figures") or {}
    for stage in ("zero2", "zero3"):
        if stage in ds:
            s = ds[stage]
            resumed = f", resumed at step {s['ppo_resumed_at_step']}" if s.get("ppo_resumed_at_step") else ""
            lines.append(f"  deepspeed {stage}: SFT losses equal to the plain run's: {s.get('sft_equal')}; PPO rows "
                         f"({s.get('ppo_steps')} steps{resumed}) equal: {s.get('ppo_equal')} (tolerance {ds['tolerance']})")
    return "\n".join(lines)


def write(record: dict, out: Path) -> None:
    (out / "gpu-check.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    (out / "gpu-check.txt").write_text(format_table(record) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu-check"), help="output folder ($OUT if set)")
    parser.add_argument("--wheels", default=str(ROOT / ".whl"), help="folder of scripts/gpu_wheels.py's batches and assets")
    parser.add_argument("--site", help="install target for the wheels (default /tmp/nlu-gpu-check/site; a fresh temp one in a dry run)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--deadline", type=float, default=DEADLINE, help=f"seconds for the whole run (default {DEADLINE})")
    parser.add_argument("--budget-scale", type=float, help="multiply every part's budget (default 1; 4 in a dry run: CPUs are slow)")
    parser.add_argument("--dry-run", action="store_true", help="the same run on the CPU with the tiny model")
    parser.add_argument("--keep-cache", action="store_true", help="use this machine's asset cache instead of the carried assets")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bench-worker", help=argparse.SUPPRESS)
    parser.add_argument("--make-random-folder", nargs=3, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.site)))
        return None
    if args.bench_worker:
        bench_worker(json.loads(args.bench_worker))
        return None
    if args.make_random_folder:
        make_random_folder(*args.make_random_folder)
        return None

    args.budget_scale = args.budget_scale or (4.0 if args.dry_run else 1.0)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise SystemExit(f"--parts: unknown {unknown}; allowed: {', '.join(PARTS)}")
    scratch = tempfile.mkdtemp(prefix="nlu-gpu-check-") if args.dry_run and not args.site else None  # removed at the end
    args.site = args.site or (f"{scratch}/site" if scratch else "/tmp/nlu-gpu-check/site")
    Path(args.site).mkdir(parents=True, exist_ok=True)
    args.work = Path(args.site).parent / "work"  # model folders, benchmark JSON, DeepSpeed runs
    args.work.mkdir(exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(args.site), str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    cache = Path(args.site).parent / "nlu-workbook-cache"
    if cache.is_dir() and not args.keep_cache:  # unpacked by an earlier call's install part on this (warm) machine
        env["NLU_WORKBOOK_CACHE"] = str(cache)
    runner = Runner(out, time.monotonic() + args.deadline, env)
    record: dict[str, Any] = {"meta": {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": args.dry_run, "parts": parts,
                                       "command": "scripts/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
                                       "deadline_s": args.deadline, "budgets_s": {k: v * args.budget_scale for k, v in BUDGETS.items()}, "machine": os.uname().nodename,
                                       "paper_7b_ppo_step_s": PAPER_7B_STEP_S},
                              "parts": {}}
    for name in parts:
        started = time.monotonic()
        if runner.total_left() < 20:
            record["parts"][name] = {"status": "skipped", "seconds": 0.0, "error": "not run: the deadline was reached"}
            write(record, out)
            continue
        runner.part_deadline = started + BUDGETS[name] * args.budget_scale
        print(f"[gpu-check] part {name} ({runner.left():.0f} s for it, {runner.total_left():.0f} s in all)", flush=True)
        try:
            figures = PART_FUNCTIONS[name](args, runner)
            status = "failed" if figures.get("error") or figures.get("errors") else "passed"
            entry = {"status": status, "seconds": round(time.monotonic() - started, 1), "figures": figures}
            if figures.get("error"):
                entry["error"] = figures["error"]
            elif figures.get("errors"):
                entry["error"] = "; ".join(f"{k}: {v}" for k, v in figures["errors"].items())
        except Exception as error:  # noqa: BLE001 - a failed part is recorded; the next one runs
            entry = {"status": "failed", "seconds": round(time.monotonic() - started, 1), "error": f"{type(error).__name__}: {error}"[:1500]}
        record["parts"][name] = entry
        if name == "env" and entry.get("figures"):
            runner.env_figures = entry["figures"]
            gpu = entry["figures"].get("gpu")
            record["meta"]["gpu"] = f"{gpu['name']} ({gpu['memory_gib']} GiB)" if gpu else "no GPU"
            record["meta"]["versions"] = entry["figures"]["versions"]
        write(record, out)
    record["meta"]["seconds_total"] = round(args.deadline - runner.total_left(), 1)
    write(record, out)
    print("\n" + format_table(record))
    print(f"\nfigures: {out / 'gpu-check.json'}; table: {out / 'gpu-check.txt'}; log: {runner.log_path}")
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return record


if __name__ == "__main__":
    main()
