"""driftlab.core.distributed: identities without a process group; sharding, reductions and
gradient averaging on two gloo processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import distributed as dist
from torch import multiprocessing as mp

from driftlab.core import distributed
from gloo import rendezvous


def test_single_process_is_identity() -> None:
    assert not distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    items = [1, 2, 3, 4, 5, 6]
    assert distributed.shard(items) == items
    assert distributed.shard(items, group_size=3) == items
    x = torch.tensor([1.0, 2.0])
    for op in distributed.REDUCE_OPS:
        assert distributed.all_reduce_(x, op) is x
    assert x.tolist() == [1.0, 2.0]
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    distributed.average_gradients_([p])
    assert p.grad.tolist() == [3.0, 4.0]
    assert distributed.gather_objects(["a", {"b": 1}]) == ["a", {"b": 1}]
    assert distributed.broadcast_object(7) == 7
    distributed.barrier()
    assert not distributed.init_from_env()  # WORLD_SIZE unset: nothing to join


def test_shard_blocks_of_whole_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    items = list(range(12))  # 4 groups of 3
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    assert distributed.shard(items, group_size=3) == [0, 1, 2, 3, 4, 5]
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.shard(items, group_size=3) == [6, 7, 8, 9, 10, 11]
    assert distributed.shard(torch.arange(8), group_size=2).tolist() == [4, 5, 6, 7]
    assert distributed.shard(("a", "b")) == ("b",)


def test_shard_rejects_uneven_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="5 items do not split into groups of 2"):
        distributed.shard(list(range(5)), group_size=2)
    with pytest.raises(ValueError, match="group_size must be an integer >= 1, got 0"):
        distributed.shard([1], group_size=0)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="3 groups of 2 do not split evenly over 2 ranks"):
        distributed.shard(list(range(6)), group_size=2)
    with pytest.raises(ValueError, match="op must be one of sum, mean, max, min; got 'avg'"):
        distributed.all_reduce_(torch.zeros(1), "avg")


def _worker(rank: int, world: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        out: dict = {"rank": distributed.rank(), "world": distributed.world_size()}
        out["shard"] = distributed.shard(list(range(8)), group_size=2)
        x = torch.tensor([float(rank + 1), 10.0 * (rank + 1)])
        out["sum"] = distributed.all_reduce_(x.clone(), "sum").tolist()
        out["mean"] = distributed.all_reduce_(x.clone(), "mean").tolist()
        out["max"] = distributed.all_reduce_(x.clone(), "max").tolist()
        out["min"] = distributed.all_reduce_(x.clone(), "min").tolist()
        a = torch.nn.Parameter(torch.zeros(2))
        b = torch.nn.Parameter(torch.zeros(1, 2))
        a.grad = torch.tensor([1.0, 2.0]) * (rank + 1)
        if rank == 0:  # b got no gradient on rank 1: it counts as zeros there
            b.grad = torch.tensor([[4.0, 8.0]])
        distributed.average_gradients_([a, b])
        out["grads"] = [a.grad.tolist(), b.grad.tolist()]
        out["gathered"] = distributed.gather_objects([f"r{rank}"] * (rank + 1))
        out["broadcast"] = distributed.broadcast_object({"from": rank})
        w = torch.full((2,), float(rank))
        distributed.broadcast_parameters_([w])
        out["weights"] = w.tolist()
        distributed.barrier()
        (Path(out_dir) / f"{rank}.json").write_text(json.dumps(out))
    except BaseException:
        distributed.shutdown(wait=False)  # the other rank may never arrive
        raise
    distributed.shutdown()  # waits for the other rank, then leaves the group


def test_two_gloo_processes(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, rendezvous(tmp_path), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        out = json.loads((tmp_path / f"{rank}.json").read_text())
        assert (out["rank"], out["world"]) == (rank, 2)
        assert out["shard"] == [[0, 1, 2, 3], [4, 5, 6, 7]][rank]
        assert out["sum"] == [3.0, 30.0]
        assert out["mean"] == [1.5, 15.0]
        assert out["max"] == [2.0, 20.0]
        assert out["min"] == [1.0, 10.0]
        assert out["grads"] == [[1.5, 3.0], [[2.0, 4.0]]]
        assert out["gathered"] == ["r0", "r1", "r1"]
        assert out["broadcast"] == {"from": 0}
        assert out["weights"] == [0.0, 0.0]


def test_backend_for_device():
    assert distributed.backend_for("cpu") == "gloo"
    assert distributed.backend_for("cuda") == "nccl"
    assert distributed.backend_for(torch.device("cuda", 1)) == "nccl"
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for("auto") == ("nccl" if torch.cuda.is_available() else "gloo")
