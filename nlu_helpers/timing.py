"""Phase timers that the training code records itself (benchmarks read them; nothing is patched at run time)."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch


@contextlib.contextmanager
def phase(seconds: dict[str, float], name: str, prefix: str = "ppo") -> Iterator[None]:
    """Add the block's wall time to ``seconds[name]`` and label it ``<prefix>/<name>`` for ``torch.profiler``.
    On CUDA the time includes the kernels the block queued (synchronised at its end)."""
    started = time.perf_counter()
    with torch.profiler.record_function(f"{prefix}/{name}"):
        yield
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
