"""Plots the notebooks share: live training curves and result bars.

``LivePlot`` redraws in place in JupyterLab and Colab while training runs; under
papermill or a plain script it redraws at most every ``min_interval`` seconds and
always once at the end (``close``), so headless runs still keep the figure.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and shell.__class__.__name__ in ("ZMQInteractiveShell", "Shell")
    except ImportError:  # pragma: no cover
        return False


class LivePlot:
    """A grid of line plots, one per metric, updated as training logs values.

    >>> plot = LivePlot(["loss"], title="SFT")
    >>> plot.update(1, {"loss": 2.3}); plot.update(2, {"loss": 1.9})
    >>> plot.close("loss.png")
    """

    def __init__(self, metrics: Sequence[str], *, title: str = "", columns: int = 3, min_interval: float = 2.0):
        if not metrics:
            raise ValueError("LivePlot needs at least one metric name")
        self.metrics = list(metrics)
        self.history: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in self.metrics}
        self.min_interval = min_interval
        self._last_draw = 0.0
        columns = min(columns, len(self.metrics))
        rows = -(-len(self.metrics) // columns)
        self.figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
        self.axes = dict(zip(self.metrics, axes.flat))
        for extra in list(axes.flat)[len(self.metrics):]:
            extra.set_visible(False)
        if title:
            self.figure.suptitle(title)
        self._handle = None
        if _in_notebook():
            from IPython.display import display

            self._handle = display(self.figure, display_id=True)
            plt.close(self.figure)  # keep the inline backend from drawing it a second time

    def update(self, step: float, values: Mapping[str, float], *, force: bool = False) -> None:
        """Record ``values`` at ``step`` (unknown keys are ignored) and redraw if it is time."""
        for name, value in values.items():
            if name in self.history and value is not None:
                xs, ys = self.history[name]
                xs.append(float(step))
                ys.append(float(value))
        now = time.monotonic()
        if force or now - self._last_draw >= self.min_interval:
            self._draw()
            self._last_draw = now

    def _draw(self) -> None:
        for name, ax in self.axes.items():
            xs, ys = self.history[name]
            ax.clear()
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
            ax.set_title(name)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        self.figure.tight_layout()
        if self._handle is not None:
            self._handle.update(self.figure)

    def close(self, path: str | Path | None = None) -> None:
        """Final redraw; saves a PNG when ``path`` is given."""
        self._draw()
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.figure.savefig(path, dpi=120, bbox_inches="tight")
        if self._handle is None:
            plt.close(self.figure)


def bar_chart(
    groups: Mapping[str, Mapping[str, float]],
    *,
    title: str = "",
    ylabel: str = "score",
    errors: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    path: str | Path | None = None,
):
    """Grouped bars: ``groups[x_label][series] = value``; ``errors`` holds (low, high) per bar."""
    series = list(dict.fromkeys(s for values in groups.values() for s in values))
    xs = list(groups)
    width = 0.8 / max(1, len(series))
    figure, ax = plt.subplots(figsize=(min(14.0, max(5.0, 0.35 * len(xs) * max(1, len(series)) + 2)), 3.6))
    for k, name in enumerate(series):
        heights = [groups[x].get(name, float("nan")) for x in xs]
        positions = [i + (k - (len(series) - 1) / 2) * width for i in range(len(xs))]
        yerr = None
        if errors:
            lows, highs = [], []
            for x, h in zip(xs, heights):
                low, high = errors.get(x, {}).get(name, (h, h))
                lows.append(max(0.0, h - low))
                highs.append(max(0.0, high - h))
            yerr = [lows, highs]
        ax.bar(positions, heights, width, label=name, yerr=yerr, capsize=3)
    ax.set_xticks(range(len(xs)), xs, rotation=45 if len(xs) > 8 else 0, ha="right" if len(xs) > 8 else "center")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120, bbox_inches="tight")
    return figure
