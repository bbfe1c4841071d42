"""Learning curves of deep RL runs: every episode's return against environment steps, with a
rolling mean over recent episodes, read from a run's ``metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or assumed

import matplotlib.pyplot as plt
import numpy as np

from driftlab.core.metrics import read_metrics


def episode_returns(metrics_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, returns)`` of the finished episodes logged in ``metrics_path`` (the step is
    the learner's step count when the episode was reported)."""
    records = [r for r in read_metrics(metrics_path) if "episode_return" in r]
    steps = np.array([r["step"] for r in records], dtype=np.int64)
    returns = np.array([r["episode_return"] for r in records], dtype=np.float64)
    return steps, returns


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    if len(values) == 0:
        return values.astype(np.float64)
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def plot_learning_curve(
    steps: np.ndarray,
    returns: np.ndarray,
    path: str | Path,
    title: str = "",
    window: int | None = None,
) -> Path:
    """Episode returns (faint points) and their rolling mean over ``window`` episodes (by
    default a tenth of the episodes, between 1 and 100) against environment steps."""
    path = Path(path)
    steps, returns = np.asarray(steps), np.asarray(returns, dtype=np.float64)
    if window is None:
        window = int(np.clip(len(returns) // 10, 1, 100))
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    ax.plot(steps, returns, ".", ms=2.5, alpha=0.3, color="tab:blue", label="episode return")
    if len(returns):
        ax.plot(
            steps, rolling_mean(returns, window), color="tab:blue", lw=2,
            label=f"mean of last {window} episodes",
        )  # fmt: skip
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no finished episode yet", ha="center", transform=ax.transAxes)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
