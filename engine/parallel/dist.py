"""The process group of a torchrun launch and the collectives the engine needs, named by the backend.

Nothing here names a vendor: the collective backend (gloo, nccl, hccl) and the device come from the backend.
A plain `python -m engine.train` (no WORLD_SIZE in the environment) never creates a process group.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True, slots=True)
class DistEnv:
    """Where this process sits in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def dist_env_from_environment() -> DistEnv:
    env = os.environ
    return DistEnv(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]), local_rank=int(env.get("LOCAL_RANK", 0)),
                   local_world_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))


def init_process_group(backend, env: DistEnv, timeout_s: float) -> None:
    """The default group over all trainer ranks, with the backend's collective library and device; a
    collective that does not complete within `timeout_s` raises (backend.collective_timeout_s)."""
    if dist.is_initialized():
        return
    device = backend.device(env.local_rank)
    kwargs = {"device_id": device} if device.type != "cpu" else {}
    dist.init_process_group(backend.collective_backend, rank=env.rank, world_size=env.world_size,
                            timeout=timedelta(seconds=timeout_s), **kwargs)


def broadcast_object(obj: Any = None) -> Any:
    """Rank 0's `obj` on every rank (a collective, pickled): for start-up values such as the control plane's
    address."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class Collectives:
    """The reductions the trainer makes once per iteration (sums and a max over ranks). `LOCAL` is the
    one-process stand-in: every call returns its input."""

    def __init__(self, device: torch.device, world_size: int) -> None:
        self.device = device
        self.world_size = world_size

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def max(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


LOCAL = Collectives(torch.device("cpu"), world_size=1)
