"""Pictures of 2-D samples and ODE trajectories (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch


def plot_sample_grid(
    panels: dict[str, torch.Tensor],
    path: str | Path,
    reference: torch.Tensor | None = None,
    limit: float = 3.5,
    columns: int = 4,
    reference_title: str = "data (exact samples)",
) -> Path:
    """One scatter panel per entry of ``panels`` (title -> ``[n, 2]`` points), after a first
    grey panel of the ``reference`` data when given."""
    if reference is not None:
        panels = {reference_title: reference, **panels}
    n = len(panels)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for i, (ax, (title, points)) in enumerate(zip(axes.flat, panels.items(), strict=False)):
        pts = points.detach().cpu().numpy()
        color = "0.3" if reference is not None and i == 0 else "tab:blue"
        ax.scatter(pts[:, 0], pts[:, 1], s=1, c=color, alpha=0.5, linewidths=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_trajectories(
    trajectories: dict[str, torch.Tensor],
    path: str | Path,
    limit: float = 3.5,
) -> Path:
    """Paths of the state through the plane, one panel per entry
    (title -> ``[steps + 1, n, 2]``); starts are hollow grey circles, ends black dots."""
    n = len(trajectories)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), squeeze=False)
    for ax, (title, traj) in zip(axes.flat, trajectories.items(), strict=False):
        paths = traj.detach().cpu().numpy()
        for i in range(paths.shape[1]):
            ax.plot(paths[:, i, 0], paths[:, i, 1], lw=0.6, alpha=0.6)
        ax.scatter(paths[0, :, 0], paths[0, :, 1], s=10, facecolors="none", edgecolors="0.5")
        ax.scatter(paths[-1, :, 0], paths[-1, :, 1], s=6, c="k", zorder=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_image_grid(
    images: torch.Tensor,
    path: str | Path,
    labels: torch.Tensor | None = None,
    columns: int = 10,
) -> Path:
    """A grid of images ``[n, C, H, W]`` in [-1, 1]; with ``labels`` each is titled."""
    n = images.shape[0]
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows + 0.2), squeeze=False)
    pictures = ((images.detach().float().clamp(-1, 1) + 1) / 2).cpu()
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = pictures[i]
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())
        if labels is not None:
            ax.set_title(str(int(labels[i])), fontsize=7)
    fig.tight_layout(pad=0.2)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_loss_curve(records: list[dict], path: str | Path) -> Path:
    """Training loss (and learning rate) against step from ``metrics.jsonl`` records."""
    rows = [r for r in records if "loss" in r and isinstance(r["loss"], int | float)]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (EDM eq. 8)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
