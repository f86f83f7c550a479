"""Fetch, here, exactly the wheels a GPU machine without a package index lacks, in batches that fit one run.

The GPU machine this project borrows has no package index and takes at most 64 MiB of files
per run (the working tree included). Its image holds torch, transformers 5.17, peft,
accelerate and the usual scientific stack (``DEVICE_PACKAGES`` below); the workbook also
needs a newer transformers, TRL, datasets (and their small dependencies), bitsandbytes for
4-bit QLoRA and DeepSpeed for the ZeRO configs. This script works out which distributions
that means, starting from ``TOP_LEVEL`` and following each wheel's ``Requires-Dist`` (markers
evaluated for the device's Python and platform), skips what the device already has at a
version that satisfies the requirement, downloads the rest as wheels for the device's
Python (``pip download --no-deps --only-binary=:all: --python-version ... --platform ...``),
builds a wheel here where the index has only an sdist (DeepSpeed: pure Python, its CUDA
ops compile at run time; ``DS_BUILD_OPS=0``), and packs them into ``.whl/batch-N/`` folders,
each small enough to travel with the working tree. ``.whl/manifest.json`` says what is in
each batch and why; ``.whl/assets/`` holds the workbook's offline assets (tokenizer, data)
without model weights, so the tiny test model can be rebuilt there with no network.

    .venv/bin/python scripts/gpu_wheels.py                 # fetch, build, batch; prints the batches
    .venv/bin/python scripts/gpu_wheels.py --dry-run       # only resolve and print what would be fetched

Versions: what this machine's ``.venv`` runs for the workbook's own dependencies (so the GPU
runs the versions the CPU tests passed with), ``PINNED`` for those not installed here.

bitsandbytes ships one 20-26 MB library per CUDA version (43 MB in all); ``--bnb-cuda``
(default: the device torch's CUDA 13.0 and 13.2) keeps only those libraries and the CPU one,
rewriting the wheel's RECORD, which brings it to a few MB. ``--bnb-cuda all`` keeps the wheel
as published.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import importlib.metadata as metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the repository
from nlu_helpers.assets import sha256_of as sha256  # noqa: E402
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".whl"  # ignored by .gitignore (/.whl/)
POOL = Path(os.environ.get("NLU_WORKBOOK_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nlu-workbook") / "gpu-wheels"
MIB = 2**20
CARRY_LIMIT = 64 * MIB  # what one device run may carry: working tree + carried paths
MARGIN = 2 * MIB  # for files the other helpers may add to the tree before the run

# --- the device --------------------------------------------------------------------------
DEVICE_PYTHON = "3.12"
DEVICE_PYTHON_FULL = "3.12.3"
# pip matches manylinux_2_N exactly; the image's glibc (Ubuntu 24.04: 2.39) runs every N up to 39
DEVICE_PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(39, 16, -1)] + ["manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"]
DEVICE_MARKERS = {
    "python_version": DEVICE_PYTHON, "python_full_version": DEVICE_PYTHON_FULL, "os_name": "posix",
    "sys_platform": "linux", "platform_machine": "x86_64", "platform_system": "Linux",
    "platform_python_implementation": "CPython", "implementation_name": "cpython",
    "implementation_version": DEVICE_PYTHON_FULL, "extra": "",
}
# What the GPU machine's image holds (its package list as read on 2026-11-17; versions where a
# `pip list` there showed them). None = present, version unknown: assumed to satisfy the workbook
# (the device check, scripts/gpu_check.py, verifies every requirement there and reports misses).
DEVICE_VERSIONS = {
    "accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
    "sentencepiece": "0.2.2", "tiktoken": "0.14.0", "tokenizers": "0.23.2", "torch": "2.11.0",
    "torchaudio": "2.11.0", "torchvision": "0.26.0", "transformers": "5.17.0", "triton": "3.6.0",
    "jaxtyping": "0.3.11", "onnx": "1.23.1", "sentence-transformers": "6.0.1", "torchmetrics": "1.9.0",
}
DEVICE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()

# --- what the workbook needs there -------------------------------------------------------
# (name, why). Versions: this venv's where installed, else PINNED.
TOP_LEVEL = [
    ("transformers", "pyproject needs >=5.24; the device has 5.17"),
    ("trl", "SFTTrainer, GRPO"),
    ("datasets", "the data layer and TRL"),
    ("peft", "the device's version is unknown; carry the one the CPU tests ran"),
    ("bitsandbytes", "4-bit QLoRA (the colab-t4 profile)"),
    ("deepspeed", "the shipped ZeRO-2/3 accelerate configs"),
]
FORCE = {"peft"}  # carried even where the device lists the package (version unknown)
PINNED = {"bitsandbytes": "0.50.2", "deepspeed": "0.19.8"}
SDIST_BUILD_ENV = {"deepspeed": {"DS_BUILD_OPS": "0", "DS_BUILD_AIO": "0", "DS_BUILD_GDS": "0"}}
BNB_DEFAULT_CUDA = "130,132"

# --- assets: what the tests and the tiny model need, minus weights ----------------------
EMBEDDED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "chat_template.jinja", "nlu_workbook.json")


@dataclass
class Wheel:
    project: str
    version: str
    file: str
    size: int
    sha256: str
    reasons: list[str] = field(default_factory=list)
    built_here: bool = False
    note: str | None = None
    install_if_missing: str | None = None  # a hedge: install only if the device's own version misses this specifier


def pip(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {}), "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def wheel_requirements(path: Path) -> list[Requirement]:
    """The wheel's Requires-Dist lines that apply on the device (no extras)."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode()
    found = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1].strip())
        if requirement.marker is None or requirement.marker.evaluate(DEVICE_MARKERS):
            found.append(requirement)
    return found


def local_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def device_has(name: str, specifier: SpecifierSet) -> tuple[bool, str]:
    """Whether the device satisfies ``name specifier``, and how we know."""
    key = canonicalize_name(name)
    if key in DEVICE_VERSIONS:
        version = DEVICE_VERSIONS[key]
        ok = specifier.contains(version, prereleases=True)
        return ok, f"device has {version}" + ("" if ok else f", needs {specifier}")
    if key in {canonicalize_name(n) for n in DEVICE_PACKAGES}:
        return True, "device lists it (version unknown: assumed to satisfy " + (str(specifier) or "any") + ")"
    return False, "not on the device"


def choose(name: str, specifier: SpecifierSet) -> str:
    """A requirement string to fetch: this venv's version when it fits (same versions as the CPU tests), else pinned or newest."""
    key = canonicalize_name(name)
    mine = local_version(key)
    if key in PINNED and specifier.contains(PINNED[key], prereleases=True):
        return f"{key}=={PINNED[key]}"
    if mine and specifier.contains(mine, prereleases=True):
        return f"{key}=={mine}"
    return f"{key}{specifier}"


def fetch(spec: str, pool: Path) -> tuple[Path, bool]:
    """A wheel for ``spec`` for the device: from the pool if there, else downloaded, else built from the sdist."""
    requirement = Requirement(spec)
    key = canonicalize_name(requirement.name)
    for candidate in sorted(pool.glob("*.whl")):
        project, version, _, _ = parse_wheel_filename(candidate.name)
        if project == key and requirement.specifier.contains(str(version), prereleases=True):
            return candidate, (pool / (candidate.name + ".built-here")).exists()
    with tempfile.TemporaryDirectory(prefix="gpu-wheels-") as tmp:
        platforms = [arg for p in DEVICE_PLATFORMS for arg in ("--platform", p)]
        done = pip("download", "--no-deps", "--only-binary=:all:", "--python-version", DEVICE_PYTHON,
                   "--implementation", "cp", *platforms, "-d", tmp, spec)
        built = False
        if done.returncode != 0:
            if "No matching distribution" not in done.stderr and "from versions: none" not in done.stderr:
                raise RuntimeError(f"pip download {spec} failed:\n{done.stderr[-2000:]}")
            # no wheel for the device: an sdist built into a wheel here (pure Python only)
            sdist = Path(tmp) / "sdist"
            done = pip("download", "--no-deps", "--no-binary=:all:", "-d", str(sdist), spec)
            if done.returncode != 0:
                raise RuntimeError(f"no wheel and no sdist for {spec}:\n{done.stderr[-2000:]}")
            archive = next(sdist.iterdir())
            done = pip("wheel", "--no-deps", "--no-build-isolation", "-w", tmp, str(archive), env=SDIST_BUILD_ENV.get(key))
            if done.returncode != 0:
                raise RuntimeError(f"building a wheel from {archive.name} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
            built = True
        [wheel] = [p for p in Path(tmp).glob("*.whl")]
        _, _, _, tags = parse_wheel_filename(wheel.name)
        if built and not any(t.abi == "none" and t.platform == "any" for t in tags):
            raise RuntimeError(f"{wheel.name} built here is not pure Python; it would not run on the device")
        target = pool / wheel.name
        shutil.move(str(wheel), target)
        if built:
            (pool / (wheel.name + ".built-here")).write_text("built from the sdist on this machine\n")
        return target, built


def resolve(pool: Path, log) -> tuple[dict[str, Wheel], dict[str, dict], dict[str, Path]]:
    """Follow the requirements from TOP_LEVEL; returns (wheels to carry, what is not carried and why, their files)."""
    wanted: dict[str, Wheel] = {}
    files: dict[str, Path] = {}
    skipped: dict[str, dict] = {}  # name -> {"how": ..., "specifier": combined requirement}
    queue: list[tuple[Requirement, str]] = []
    for name, why in TOP_LEVEL:
        spec = f"{name}=={PINNED[name]}" if name in PINNED else (f"{name}=={local_version(name)}" if local_version(name) else name)
        queue.append((Requirement(spec), f"workbook: {why}"))
    while queue:
        requirement, why = queue.pop(0)
        key = canonicalize_name(requirement.name)
        if key in wanted:
            if not requirement.specifier.contains(wanted[key].version, prereleases=True):
                raise RuntimeError(f"{key} {wanted[key].version} is carried but {why} needs {requirement.specifier}")
            wanted[key].reasons.append(why)
            continue
        combined = SpecifierSet(str(requirement.specifier))
        if key in skipped:
            combined &= SpecifierSet(skipped[key]["specifier"])
        ok, how = device_has(key, combined)
        if ok and key not in FORCE:
            skipped[key] = {"how": how, "specifier": str(combined)}
            continue
        spec = str(requirement) if why.startswith("workbook:") else choose(key, combined)
        path, built = fetch(spec, pool)
        project, version, _, _ = parse_wheel_filename(path.name)
        log(f"  {path.name:70s} {path.stat().st_size / MIB:6.1f} MiB  ({why}; {how})")
        wanted[key] = Wheel(project=str(project), version=str(version), file=path.name, size=path.stat().st_size,
                            sha256=sha256(path), reasons=[why], built_here=built)
        files[key] = path
        skipped.pop(key, None)
        for sub in wheel_requirements(path):
            queue.append((sub, f"{key} {version} requires {sub}"))
    return wanted, skipped, files


def hedge(skipped: dict[str, dict], pool: Path, limit: int, log) -> tuple[dict[str, Wheel], dict[str, Path]]:
    """Small wheels for requirements with a version bound on packages the device has at an
    unknown version: carried, and installed there only if the device's own version misses the bound."""
    wheels: dict[str, Wheel] = {}
    files: dict[str, Path] = {}
    for key, info in sorted(skipped.items()):
        if canonicalize_name(key) in DEVICE_VERSIONS or not info["specifier"]:
            continue
        try:
            path, _ = fetch(choose(key, SpecifierSet(info["specifier"])), pool)
        except RuntimeError as error:
            info["how"] += f"; no hedge wheel ({str(error).splitlines()[0]})"
            continue
        project, version, _, _ = parse_wheel_filename(path.name)
        if path.stat().st_size > limit:
            info["how"] += f"; not hedged ({path.name} is {path.stat().st_size / MIB:.1f} MiB, over --hedge-kib)"
            continue
        log(f"  {path.name:70s} {path.stat().st_size / MIB:6.2f} MiB  (hedge: installed there only if the device's "
            f"{key} misses {info['specifier']})")
        wheels[key] = Wheel(project=str(project), version=str(version), file=path.name, size=path.stat().st_size,
                            sha256=sha256(path), reasons=[f"hedge for {info['specifier']}"], install_if_missing=info["specifier"])
        files[key] = path
        info["how"] += f"; hedged with {path.name}"
    return wheels, files


def slim_bitsandbytes(source: Path, target: Path, keep_cuda: list[str]) -> str:
    """A copy of the bitsandbytes wheel with only the CPU library and the CUDA ``keep_cuda`` ones; RECORD rewritten."""
    keep = {"libbitsandbytes_cpu.so"} | {f"libbitsandbytes_cuda{v}.so" for v in keep_cuda}
    dropped = []
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        record_name = next(n for n in old.namelist() if n.endswith(".dist-info/RECORD"))
        rows = []
        for info in old.infolist():
            base = info.filename.rsplit("/", 1)[-1]
            if re.fullmatch(r"libbitsandbytes_.*\.so", base) and base not in keep:
                dropped.append(base)
                continue
            if info.filename == record_name:
                continue
            data = old.read(info)
            new.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append([info.filename, f"sha256={digest}", str(len(data))])
        rows.append([record_name, "", ""])
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        new.writestr(record_name, buffer.getvalue())
    missing = keep - {n.rsplit("/", 1)[-1] for n in zipfile.ZipFile(target).namelist()}
    if missing:
        raise RuntimeError(f"bitsandbytes wheel {source.name} has no {sorted(missing)}; --bnb-cuda must name versions it ships")
    return f"slimmed here: kept {', '.join(sorted(keep))}; dropped {len(dropped)} other libraries (original sha256 {sha256(source)})"


def travelling_bytes() -> int:
    """What travels with every device run besides carried paths: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sum((ROOT / p).stat().st_size for p in listed if p and (ROOT / p).is_file())


def build_assets(target: Path) -> Path:
    """The offline assets the GPU tests need, without weights: the embedded model's tokenizer and config
    (tiny-random is rebuilt from them there, seeded) and the movie-snippets data cache."""
    sys.path.insert(0, str(ROOT))
    from nlu_helpers import assets, data, models

    embedded = models.embedded_model_dir()  # builds the cache here if needed
    data.load_split(data.OFFLINE_TASK, "train", limit=1)
    cache = assets.cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    path = target / "nlu-workbook-assets.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name in EMBEDDED_FILES:
            file = embedded / name
            if file.is_file():
                archive.add(file, arcname=f"models/{embedded.name}/{name}")
        folder = data.snippets_cache_dir()
        for file in sorted(folder.iterdir()):
            archive.add(file, arcname=str(file.relative_to(cache)))
    return path


def check_installs(wheels: list[Path]) -> str:
    """pip's own verdict that the wheels install for the device's Python and platform (nothing is installed)."""
    platforms = [arg for p in DEVICE_PLATFORMS for arg in ("--platform", p)]
    with tempfile.TemporaryDirectory(prefix="gpu-wheels-check-") as target:
        done = pip("install", "--dry-run", "--no-index", "--no-deps", "--only-binary=:all:", "--target", target,
                   "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms, *map(str, wheels))
    if done.returncode != 0:
        raise RuntimeError(f"the batch does not install for CPython {DEVICE_PYTHON} on linux x86_64:\n{done.stderr[-2000:]}")
    return "ok: " + done.stdout.strip().splitlines()[-1]


def pack(wheels: list[Wheel], capacity: int) -> list[list[Wheel]]:
    """First-fit decreasing into batches of at most ``capacity`` bytes."""
    batches: list[list[Wheel]] = []
    for wheel in sorted(wheels, key=lambda w: -w.size):
        if wheel.size > capacity:
            raise RuntimeError(f"{wheel.file} ({wheel.size / MIB:.1f} MiB) alone exceeds a run's room ({capacity / MIB:.1f} MiB)")
        for batch in batches:
            if sum(w.size for w in batch) + wheel.size <= capacity:
                batch.append(wheel)
                break
        else:
            batches.append([wheel])
    return batches


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default .whl, ignored by git)")
    parser.add_argument("--pool", type=Path, default=POOL, help="where downloaded wheels are kept between runs")
    parser.add_argument("--bnb-cuda", default=BNB_DEFAULT_CUDA,
                        help="CUDA versions whose bitsandbytes library to keep, e.g. 130,132; 'all' keeps the wheel whole")
    parser.add_argument("--hedge-kib", type=int, default=1024,
                        help="also carry wheels up to this size for bounded requirements on device packages of "
                             "unknown version (installed there only when needed); 0: none")
    parser.add_argument("--dry-run", action="store_true", help="resolve and download into the pool, write no batches")
    args = parser.parse_args(argv)
    args.pool.mkdir(parents=True, exist_ok=True)
    print(f"resolving for the device: CPython {DEVICE_PYTHON} on linux x86_64 (pool {args.pool})")
    wanted, skipped, files = resolve(args.pool, print)
    if args.hedge_kib > 0:
        hedges, hedge_files = hedge(skipped, args.pool, args.hedge_kib * 1024, print)
        wanted.update(hedges)
        files.update(hedge_files)
    if args.dry_run:
        return {"wheels": [asdict(w) for w in wanted.values()], "not_carried": skipped}

    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    staged = Path(tempfile.mkdtemp(prefix="gpu-wheels-stage-"))
    try:
        if "bitsandbytes" in wanted and args.bnb_cuda != "all":
            bnb = wanted["bitsandbytes"]
            slim = staged / bnb.file
            bnb.note = slim_bitsandbytes(files["bitsandbytes"], slim, [v.strip() for v in args.bnb_cuda.split(",") if v.strip()])
            files["bitsandbytes"] = slim
            bnb.size, bnb.sha256 = slim.stat().st_size, sha256(slim)
        assets_file = build_assets(args.out / "assets")
        tree = travelling_bytes()
        reserve = tree + assets_file.stat().st_size + MARGIN
        capacity = CARRY_LIMIT - reserve - 64 * 1024  # and the manifest
        batches = pack(list(wanted.values()), capacity)
        by_file = {w.file: k for k, w in wanted.items()}
        manifest = {
            "device": {"python": DEVICE_PYTHON, "platforms": DEVICE_PLATFORMS[:4] + ["..."], "known_versions": DEVICE_VERSIONS},
            "limit_bytes": CARRY_LIMIT, "working_tree_bytes": tree, "assets": {"file": f"assets/{assets_file.name}",
                                                                               "bytes": assets_file.stat().st_size},
            "margin_bytes": MARGIN, "room_per_batch_bytes": capacity,
            "batches": [], "not_carried": dict(sorted(skipped.items())),
            "install": "python3 -m pip install --no-index --no-deps --no-compile --target SITE .whl/batch-N/*.whl "
                       "(scripts/gpu_check.py does this)",
        }
        for i, batch in enumerate(batches, 1):
            folder = args.out / f"batch-{i}"
            folder.mkdir()
            for wheel in batch:
                shutil.copy2(files[by_file[wheel.file]], folder / wheel.file)
            manifest["batches"].append({
                "name": folder.name, "bytes": sum(w.size for w in batch),
                "carry": [f".whl/{folder.name}", ".whl/manifest.json", ".whl/assets"] if len(batches) > 1 else [".whl"],
                "wheels": [asdict(w) for w in sorted(batch, key=lambda w: w.project)],
            })
        for batch in manifest["batches"]:
            batch["device_install_check"] = check_installs(sorted((args.out / batch["name"]).glob("*.whl")))
        (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    finally:
        shutil.rmtree(staged, ignore_errors=True)

    print(f"\nworking tree that travels: {tree / MIB:.2f} MiB; assets: {assets_file.stat().st_size / MIB:.2f} MiB; "
          f"room per run for wheels: {capacity / MIB:.1f} MiB")
    for batch in manifest["batches"]:
        print(f"{batch['name']}: {len(batch['wheels'])} wheels, {batch['bytes'] / MIB:.1f} MiB "
              f"(+ tree and assets: {(batch['bytes'] + reserve) / MIB:.1f} of 64 MiB); carry {batch['carry']}; "
              f"device install check {batch['device_install_check'][:2]}")
        for wheel in batch["wheels"]:
            extra = (" [built here]" if wheel["built_here"] else "") + (" [hedge]" if wheel["install_if_missing"] else "")
            print(f"    {wheel['file']:72s} {wheel['size'] / MIB:6.2f} MiB{extra}")
    print("not carried (the device has them):")
    for name, info in manifest["not_carried"].items():
        print(f"    {name:20s} {info['specifier'] or 'any':26s} {info['how']}")
    print(f"manifest: {args.out / 'manifest.json'}")
    return manifest


if __name__ == "__main__":
    main()
