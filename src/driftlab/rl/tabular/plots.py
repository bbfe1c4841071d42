"""Pictures like the book's (Zhao ch. 1-5): the grid, a policy as arrows, values, curves.

Forbidden cells are orange, the target cyan. A policy is drawn in each cell as one arrow per
action with probability > 0, its length scaled by the probability, and a circle for "stay".
When both a policy and values are given they are drawn side by side, as in the book's figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or assumed

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Circle, Rectangle

from driftlab.rl.tabular.gridworld import MOVES, GridWorld

FORBIDDEN_COLOR = "#f5a623"
TARGET_COLOR = "#5ad2f4"
ARROW_COLOR = "#1a7f37"
ARROW_SYMBOLS = ("↑", "→", "↓", "←", "○")


def _draw_cells(ax: Axes, world: GridWorld) -> None:
    """Grid lines and coloured cells; cell (r, c) spans [c-1, c] x [r-1, r] (row 1 on top)."""
    forbidden = set(world.forbidden)
    for r in range(1, world.rows + 1):
        for c in range(1, world.cols + 1):
            if (r, c) == world.target:
                color = TARGET_COLOR
            elif (r, c) in forbidden:
                color = FORBIDDEN_COLOR
            else:
                color = "white"
            ax.add_patch(Rectangle((c - 1, r - 1), 1, 1, facecolor=color, edgecolor="0.3"))
    ax.set_xlim(0, world.cols)
    ax.set_ylim(world.rows, 0)
    ax.set_aspect("equal")
    ax.set_xticks(np.arange(world.cols) + 0.5, [str(c) for c in range(1, world.cols + 1)])
    ax.set_yticks(np.arange(world.rows) + 0.5, [str(r) for r in range(1, world.rows + 1)])
    ax.tick_params(length=0)
    ax.xaxis.tick_top()


def _draw_policy(ax: Axes, world: GridWorld, policy: np.ndarray, min_prob: float) -> None:
    """One arrow per action with probability >= min_prob, length ~ probability; circle for
    stay."""
    policy = world.check_policy(policy)
    for s in range(world.n_states):
        r, c = world.cell(s)
        x, y = c - 0.5, r - 0.5
        for a, p in enumerate(policy[s]):
            if p < min_prob:
                continue
            dy, dx = MOVES[a]
            if dx == 0 and dy == 0:
                ax.add_patch(Circle((x, y), 0.05 + 0.1 * p, fill=False, lw=1.5, ec=ARROW_COLOR))
                continue
            # An offset keeps low-probability arrows visible beside the stay circle.
            length = 0.1 + 0.32 * p
            ax.arrow(
                x, y, dx * length, dy * length, width=0.01 + 0.015 * p, head_width=0.06 + 0.05 * p,
                head_length=0.07, length_includes_head=True, color=ARROW_COLOR,
            )  # fmt: skip


def format_value(value: float, decimals: int) -> str:
    """``value`` rounded, without the sign of a negative number that rounds to zero."""
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0.0 else text


def _draw_values(ax: Axes, world: GridWorld, values: np.ndarray, decimals: int) -> None:
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (world.n_states,):
        raise ValueError(f"values must have shape ({world.n_states},), got {values.shape}")
    size = max(6, 14 - max(world.rows, world.cols))
    for s in range(world.n_states):
        r, c = world.cell(s)
        ax.text(c - 0.5, r - 0.5, format_value(values[s], decimals), ha="center", va="center",
                fontsize=size)  # fmt: skip


def plot_grid(
    world: GridWorld,
    values: np.ndarray | None = None,
    policy: np.ndarray | None = None,
    path: str | Path = "grid.png",
    title: str | None = None,
    decimals: int = 1,
    min_prob: float = 0.02,
) -> Path:
    """Draw the grid world, optionally with a policy and/or state values; save a PNG.

    With only ``policy`` or only ``values`` one panel is drawn; with both, the policy (left)
    and the values (right) side by side. Actions of probability below ``min_prob`` are not
    drawn, so that a softmax policy shows its preferred moves. Returns the path written.
    """
    panels = [p for p in (("policy", policy), ("values", values)) if p[1] is not None]
    if not panels:
        panels = [("grid", None)]
    cell = 0.75
    fig, axes = plt.subplots(
        1, len(panels), figsize=(len(panels) * world.cols * cell + 0.6, world.rows * cell + 0.9),
        squeeze=False,
    )  # fmt: skip
    for ax, (kind, data) in zip(axes[0], panels, strict=True):
        _draw_cells(ax, world)
        if kind == "policy":
            _draw_policy(ax, world, data, min_prob)
        elif kind == "values":
            _draw_values(ax, world, data, decimals)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_learning_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    path: str | Path,
    xlabel: str = "episodes",
    ylabel: str = "value error (RMS over states)",
    title: str | None = None,
    log_y: bool = False,
) -> Path:
    """Mean curves with a +-1 std band over runs: ``curves[label] = (x, mean, std)``."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, (x, mean, std) in curves.items():
        x, mean, std = (np.asarray(v, dtype=np.float64) for v in (x, mean, std))
        (line,) = ax.plot(x, mean, label=label)
        if log_y:
            # On a log axis a mean - std band crosses zero; draw the band symmetric in log
            # space instead: mean / f to mean * f with f = 1 + std / mean.
            factor = 1 + std / np.maximum(mean, 1e-300)
            low, high = mean / factor, mean * factor
        else:
            low, high = mean - std, mean + std
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
