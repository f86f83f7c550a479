"""Plots the notebooks share: live training curves, curves from a saved log, and result bars.

``LivePlot`` redraws in place in JupyterLab and Colab while training runs; under
papermill or a plain script it redraws at most every ``min_interval`` seconds and
always once at the end (``close``), so headless runs still keep the figure.
``log_figure`` draws the same grid once from a saved training log (notebooks 05, 06).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt

# The PPO log keys worth watching (names as PPOTrainer.step() logs them): notebook 04 draws them
# live, notebook 06 from the saved log. A key the log lacks is an error there, not a missing curve.
PPO_CURVES = ("reward", "accuracy", "unparseable", "kl", "entropy", "clip_frac")


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and shell.__class__.__name__ in ("ZMQInteractiveShell", "Shell")
    except ImportError:  # pragma: no cover
        return False


def _grid(metrics: Sequence[str], title: str, columns: int = 3):
    """A figure with one axis per metric, ``columns`` wide; returns (figure, {metric: axis})."""
    if not metrics:
        raise ValueError("a plot needs at least one metric name")
    columns = min(columns, len(metrics))
    rows = -(-len(metrics) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for extra in list(axes.flat)[len(metrics):]:
        extra.set_visible(False)
    if title:
        figure.suptitle(title)
    return figure, dict(zip(metrics, axes.flat))


def _record(history: dict[str, tuple[list[float], list[float]]], step: float, values: Mapping[str, float]) -> None:
    for name, value in values.items():
        if name in history and value is not None:
            xs, ys = history[name]
            xs.append(float(step))
            ys.append(float(value))


def _draw_lines(figure, axes: Mapping[str, object], history: Mapping[str, tuple[list[float], list[float]]]) -> None:
    for name, ax in axes.items():
        xs, ys = history[name]
        ax.clear()
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    figure.tight_layout()


class LivePlot:
    """A grid of line plots, one per metric, updated as training logs values.

    >>> plot = LivePlot(["loss"], title="SFT")
    >>> plot.update(1, {"loss": 2.3}); plot.update(2, {"loss": 1.9})
    >>> plot.close("loss.png")
    """

    def __init__(self, metrics: Sequence[str], *, title: str = "", columns: int = 3, min_interval: float = 2.0):
        self.metrics = list(metrics)
        self.history: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in self.metrics}
        self.min_interval = min_interval
        self._last_draw = 0.0
        self.figure, self.axes = _grid(self.metrics, title, columns)
        self._handle = None
        if _in_notebook():
            from IPython.display import display

            self._handle = display(self.figure, display_id=True)
            plt.close(self.figure)  # keep the inline backend from drawing it a second time

    def update(self, step: float, values: Mapping[str, float], *, force: bool = False) -> None:
        """Record ``values`` at ``step`` (unknown keys are ignored) and redraw if it is time."""
        _record(self.history, step, values)
        now = time.monotonic()
        if force or now - self._last_draw >= self.min_interval:
            self._draw()
            self._last_draw = now

    def _draw(self) -> None:
        _draw_lines(self.figure, self.axes, self.history)
        if self._handle is not None:
            self._handle.update(self.figure)

    def close(self, path: str | Path | None = None, *, history: Sequence[Mapping[str, float]] | None = None) -> None:
        """Final redraw; saves a PNG when ``path`` is given.

        ``history`` (log rows with a ``step`` key) replaces what the plot recorded: a run that
        resumed from a checkpoint then shows all its steps, not only those this kernel ran.
        """
        if history is not None:
            self.history = {m: ([], []) for m in self.metrics}
            for row in history:
                _record(self.history, row["step"], row)
        self._draw()
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.figure.savefig(path, dpi=120, bbox_inches="tight")
        if self._handle is None:
            plt.close(self.figure)


def log_figure(
    rows: Sequence[Mapping[str, float]],
    metrics: Sequence[str],
    *,
    title: str = "",
    path: str | Path | None = None,
):
    """One line plot per metric from a saved training log (rows with a ``step`` key), drawn once.

    Every metric must be in the log: a renamed key fails here with the keys the log has,
    instead of silently leaving its curve out.
    """
    if not rows:
        raise ValueError("the training log is empty: nothing to draw")
    missing = [m for m in metrics if all(m not in row for row in rows)]
    if missing:
        raise KeyError(f"the log has no {missing}; its keys are {sorted(set().union(*rows))}")
    figure, axes = _grid(metrics, title)
    history: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in metrics}
    for row in rows:
        _record(history, row["step"], row)
    _draw_lines(figure, axes, history)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120, bbox_inches="tight")
    return figure


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
