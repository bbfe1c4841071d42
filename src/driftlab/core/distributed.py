"""Data-parallel training across processes with :mod:`torch.distributed`, launched by
``torchrun`` (gloo on CPU, NCCL on CUDA), shared by the diffusion and language-model trainers.

Every rank holds the whole model and works on its own block of the global batch (the
language-model trainers' prompt groups, :func:`shard`); gradients are averaged before each
optimiser step, so all ranks keep identical weights. Every function here is a no-op (or the
identity) when no process group is initialised, so the trainers call them unconditionally and
a single process needs nothing.

The contract that makes a 2-process run equal a 1-process run lives in the trainers: loss
denominators (token counts, sequence counts) are summed over all ranks with
:func:`all_reduce_` *before* the update, and each rank's loss is scaled so that the mean of
the ranks' losses is the loss of the global batch (see :func:`average_gradients_`).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import distributed as dist

T = TypeVar("T")

REDUCE_OPS = ("sum", "mean", "max", "min")


def is_initialized() -> bool:
    """Whether a process group is running (``torch.distributed`` available and initialised)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of processes, 1 without a process group."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Whether this is rank 0, the process that prints, logs and writes checkpoints."""
    return rank() == 0


def shard(items: Sequence[T], group_size: int = 1) -> Sequence[T]:
    """This rank's contiguous block of ``items`` (a list, tuple or tensor, sliced on its first
    dimension), made of whole groups of ``group_size`` consecutive items.

    Rank ``r`` of ``W`` gets groups ``r * n / W ... (r + 1) * n / W - 1`` of the ``n`` groups,
    so concatenating the shards in rank order gives back ``items`` and no group is split.
    ``n`` must be a multiple of ``W``: unequal shards would make ranks take different numbers
    of optimiser steps and deadlock in the gradient all-reduce.
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    count = len(items)
    if count % group_size:
        raise ValueError(f"{count} items do not split into groups of {group_size}")
    size = world_size()
    groups = count // group_size
    if groups % size:
        raise ValueError(
            f"{groups} groups of {group_size} do not split evenly over {size} ranks; "
            f"use a multiple of {size}"
        )
    per_rank = groups // size * group_size
    start = rank() * per_rank
    return items[start : start + per_rank]


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` over all ranks in place (``op`` in sum, mean, max, min) and return it.

    ``mean`` is a sum divided by the world size (gloo has no average).
    """
    if op not in REDUCE_OPS:
        raise ValueError(f"op must be one of {', '.join(REDUCE_OPS)}; got {op!r}")
    if not is_initialized() or world_size() == 1:
        return tensor
    reduce_op = {"max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}.get(op, dist.ReduceOp.SUM)
    dist.all_reduce(tensor, op=reduce_op)
    if op == "mean":
        tensor.div_(world_size())
    return tensor


def average_gradients_(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over all ranks (what DDP does).

    So that the averaged gradient is the gradient of the global batch's loss, each rank's
    loss must be ``world_size() * (its share of the numerator) / (global denominator)``.
    A parameter that received no gradient on this rank contributes zeros (every rank must
    reduce the same tensors). The gradients travel as one flat buffer: one message, not one
    per parameter.
    """
    if not is_initialized() or world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    all_reduce_(flat, "mean")
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def broadcast_parameters_(params: Iterable[torch.Tensor], src: int = 0) -> None:
    """Copy rank ``src``'s values of ``params`` (parameters or buffers) to every rank, so all
    ranks start from the same weights."""
    if not is_initialized() or world_size() == 1:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=src)


def gather_objects(items: list[Any]) -> list[Any]:
    """The concatenation, in rank order, of every rank's ``items`` (picklable objects); every
    rank receives the whole list. Without a process group, ``items`` itself."""
    if not is_initialized() or world_size() == 1:
        return list(items)
    gathered: list[list[Any] | None] = [None] * world_size()
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in (part or [])]


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable)."""
    if not is_initialized() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait until every rank reaches this point."""
    if is_initialized() and world_size() > 1:
        dist.barrier()


def launched_by_torchrun() -> bool:
    """Whether the environment of ``torchrun`` asks for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def backend_for(device: str | torch.device) -> str:
    """The process group backend for training on ``device``: NCCL for CUDA (``"auto"`` when
    CUDA is available), gloo otherwise."""
    kind = torch.device(device).type if isinstance(device, torch.device) else device
    use_cuda = kind.startswith("cuda") or (kind == "auto" and torch.cuda.is_available())
    return "nccl" if use_cuda else "gloo"


def init_from_env(backend: str = "gloo", timeout_s: float = 600.0) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); returns whether one was joined.

    Does nothing when ``WORLD_SIZE`` is unset or 1, or when a group is already running.
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def shutdown(wait: bool = True) -> None:
    """Leave the process group, if one is running: with ``wait``, after every rank has come
    here, so that no rank tears its group down while another still talks to it. ``wait=False``
    is for leaving on an error, when the other ranks may never arrive.

    Garbage is collected around the teardown: a gloo object that survives it in a reference
    cycle is otherwise destroyed during interpreter shutdown, which aborts the process
    ("terminate called without an active exception") after its work is done."""
    if is_initialized():
        if wait:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
