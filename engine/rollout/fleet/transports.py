"""Weight-sync transports: how the trainer's weights reach a rollout worker process (docs/pipeline.md).

A transport is connected once, before the worker starts, with the names, shapes and dtypes it will carry:

    sender, receiver = transport.connect(named_tensors, receiver_device)   # trainer process
    # the receiver is pickled into the worker process when it is spawned; there: receiver.open()

and every sync of policy version k is then, in this order:

    trainer: sender.send(named_tensors)  -> message "load version k" ->  worker: receiver.receive()  -> ack k

so a receiver reads only after the sender's writes are complete, and the sender writes again only after the
ack. Tensors travel packed in one flat buffer per dtype (one copy or collective per dtype, one shared-memory
file descriptor per dtype rather than one per parameter).

Implementations: `SharedBufferTransport` (CPU shared memory: tested; CUDA IPC: same code, written to the
documented torch.multiprocessing CUDA-sharing API and unverified here) and `CollectiveBroadcastTransport`
(NCCL on CUDA, HCCL on Ascend, through torch.distributed: unverified here, no accelerator on the development
machines). Backends only name the method (`Backend.weight_sync_method`) and their collective library;
`make_transport` builds the transport. Nothing here calls a vendor API.
"""
from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch


class WeightSender(Protocol):
    """Trainer side of a weight-sync transport."""

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Publish these values; on return the worker may read them (it is told so by a version message)."""
        ...

    def resend(self) -> None:
        """Publish the last `send`'s values again, from the transport's own buffers (for a restarted worker:
        the trainer's tensors may have stepped since)."""
        ...

    def close(self) -> None: ...


class WeightReceiver(Protocol):
    """Rollout-worker side; picklable, it is handed to the worker process when that is spawned."""

    def open(self) -> None:
        """Called once in the worker before it reads any message (joins a collective group, if any)."""
        ...

    def receive(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The values of the latest `send`, to be copied into the worker's model before acknowledging."""
        ...

    def close(self) -> None: ...


class WeightSyncTransport(Protocol):
    name: str  # "shared_memory" | "device_ipc" | "<collective>_broadcast"

    def connect(self, named_tensors: Iterable[tuple[str, torch.Tensor]],
                receiver_devices: list[torch.device]) -> tuple[WeightSender, list[WeightReceiver]]:
        """Allocate, once, what syncing tensors of these names, shapes and dtypes to workers on these devices
        needs: one sender, one receiver per worker (a send reaches them all)."""
        ...


def make_transport(backend, rollout_device: torch.device) -> WeightSyncTransport:
    """The transport the backend names for a worker on `rollout_device` (Backend.weight_sync_method)."""
    method = backend.weight_sync_method(rollout_device)
    if method in ("shared_memory", "device_ipc"):
        return SharedBufferTransport(method, backend.device(), backend.synchronize)
    if method == "collective":
        # a string, not backend.device(): an accelerator device type may exist only once its backend is imported
        return CollectiveBroadcastTransport(backend.collective_backend, f"{backend.device_type}:0")
    raise ValueError(f"{backend.name}: unknown weight-sync method {method!r}")


@dataclass(frozen=True, slots=True)
class TensorSlot:
    """Where one named tensor lives: a view of `numel` elements at `offset` in its dtype's flat buffer."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())


def plan_slots(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[list[TensorSlot], dict[torch.dtype, int]]:
    """The slots of `named_tensors` packed per dtype, and each dtype's total element count."""
    slots, totals = [], {}
    for name, tensor in named_tensors:
        offset = totals.get(tensor.dtype, 0)
        slots.append(TensorSlot(name, tensor.dtype, tuple(tensor.shape), offset))
        totals[tensor.dtype] = offset + tensor.numel()
    return slots, totals


def slot_views(slots: list[TensorSlot], flat: dict[torch.dtype, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {s.name: flat[s.dtype][s.offset:s.offset + s.numel].view(s.shape) for s in slots}


def pack_into(views: dict[str, torch.Tensor], named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy each given tensor into its view; a name or shape the transport was not connected with is an error."""
    with torch.no_grad():
        for name, tensor in named_tensors:
            view = views.get(name)
            if view is None:
                raise KeyError(f"weight sync: {name!r} was not among the tensors the transport was connected with")
            if view.shape != tensor.shape:
                raise ValueError(f"weight sync: {name!r} has shape {tuple(tensor.shape)}, the transport was "
                                 f"connected with {tuple(view.shape)}")
            view.copy_(tensor.detach())


# ------------------------------------------------------------------------------ shared buffers (shm, CUDA IPC)


class SharedBufferTransport:
    """Flat buffers allocated once on the trainer's device and shared with the worker at spawn.

    CPU: the buffers are moved to shared memory and torch.multiprocessing passes their file descriptors.
    CUDA (`name="cuda_ipc"`): torch.multiprocessing passes CUDA IPC handles of the same buffers; the trainer
    keeps them alive for the worker's lifetime, and `synchronize` (the backend's) runs after the copies so the
    worker, on another stream or device, reads finished writes. The CUDA path is unverified in this repository.
    """

    def __init__(self, name: str, device: torch.device, synchronize: Callable[[], None]) -> None:
        self.name = name
        self.device = torch.device(device)
        self._synchronize = synchronize

    def connect(self, named_tensors: Iterable[tuple[str, torch.Tensor]],
                receiver_devices: list[torch.device]) -> tuple[SharedBufferSender, list[SharedBufferReceiver]]:
        """One set of buffers for every worker: each reads the same memory."""
        slots, totals = plan_slots(named_tensors)
        flat = {dtype: torch.zeros(n, dtype=dtype, device=self.device) for dtype, n in totals.items()}
        if self.device.type == "cpu":
            for buffer in flat.values():
                buffer.share_memory_()
        receiver = SharedBufferReceiver(slots, flat)
        return SharedBufferSender(slots, flat, self._synchronize), [receiver] * len(receiver_devices)


class SharedBufferSender:
    def __init__(self, slots: list[TensorSlot], flat: dict[torch.dtype, torch.Tensor],
                 synchronize: Callable[[], None]) -> None:
        self._flat = flat  # holds the shared storage alive for the worker
        self._views = slot_views(slots, flat)
        self._synchronize = synchronize

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        pack_into(self._views, named_tensors)
        self._synchronize()

    def resend(self) -> None:
        """The shared buffers still hold the last send: a new receiver reads them as they are."""

    def close(self) -> None:
        self._views, self._flat = {}, {}


class SharedBufferReceiver:
    """Picklable: crosses into the worker with the shared storages themselves."""

    def __init__(self, slots: list[TensorSlot], flat: dict[torch.dtype, torch.Tensor]) -> None:
        self.slots = slots
        self.flat = flat

    def open(self) -> None:
        return None

    def receive(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Views of the shared buffers: read them (copy into the model) before acknowledging the version."""
        return iter(slot_views(self.slots, self.flat).items())

    def close(self) -> None:
        self.flat = {}


# ----------------------------------------------------------------------------- collective broadcast (NCCL, HCCL)


class CollectiveBroadcastTransport:
    """A two-rank torch.distributed group, trainer = rank 0, worker = rank 1; a sync is one broadcast per dtype
    of a flat buffer. `collective_backend` is the backend's (NCCL on CUDA, HCCL on Ascend); trainer and
    worker must sit on different devices (NCCL refuses two ranks on one GPU).

    Unverified in this repository (no accelerator on the development machines); written to the documented
    `torch.distributed.init_process_group` / `broadcast` API. It initialises the default process group in both
    processes, which assumes the trainer has none of its own (true while it runs as one process).
    """

    def __init__(self, collective_backend: str, device: str, host: str = "127.0.0.1") -> None:
        self.name = f"{collective_backend}_broadcast"
        self.collective_backend = collective_backend
        self.device = device  # a string: see make_transport
        self.host = host

    def connect(self, named_tensors: Iterable[tuple[str, torch.Tensor]],
                receiver_devices: list[torch.device]) -> tuple[CollectiveSender, list[CollectiveReceiver]]:
        """One group: the trainer (rank 0) and worker i (rank i + 1); a send is one broadcast per dtype."""
        slots, totals = plan_slots(named_tensors)
        address = f"tcp://{self.host}:{_free_port(self.host)}"
        world = 1 + len(receiver_devices)
        sender = CollectiveSender(self.collective_backend, address, slots, totals, torch.device(self.device), world)
        return sender, [CollectiveReceiver(self.collective_backend, address, slots, totals, str(device), world, i + 1)
                        for i, device in enumerate(receiver_devices)]


class CollectiveSender:
    def __init__(self, backend: str, address: str, slots: list[TensorSlot], totals: dict[torch.dtype, int],
                 device: torch.device, world_size: int = 2) -> None:
        self._backend, self._address, self._world = backend, address, world_size
        self._flat = {dtype: torch.zeros(n, dtype=dtype, device=device) for dtype, n in totals.items()}
        self._views = slot_views(slots, self._flat)
        self._joined = False

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        import torch.distributed as dist

        if not self._joined:  # the worker joined in receiver.open(), before it read any message
            dist.init_process_group(self._backend, init_method=self._address, world_size=self._world, rank=0)
            self._joined = True
        pack_into(self._views, named_tensors)
        self.resend()

    def resend(self) -> None:
        import torch.distributed as dist

        for buffer in self._flat.values():
            dist.broadcast(buffer, src=0)

    def close(self) -> None:
        import torch.distributed as dist

        if self._joined and dist.is_initialized():
            dist.destroy_process_group()
        self._joined = False


class CollectiveReceiver:
    """Picklable: carries only the rendezvous address and the layout; buffers are made in the worker."""

    def __init__(self, backend: str, address: str, slots: list[TensorSlot], totals: dict[torch.dtype, int],
                 device: str, world_size: int = 2, rank: int = 1) -> None:
        self.backend, self.address, self.slots, self.totals, self.device = backend, address, slots, totals, device
        self.world_size, self.rank = world_size, rank
        self._flat: dict[torch.dtype, torch.Tensor] = {}

    def open(self) -> None:
        import torch.distributed as dist

        dist.init_process_group(self.backend, init_method=self.address, world_size=self.world_size, rank=self.rank)
        self._flat = {dtype: torch.zeros(n, dtype=dtype, device=self.device) for dtype, n in self.totals.items()}

    def receive(self) -> Iterator[tuple[str, torch.Tensor]]:
        import torch.distributed as dist

        for buffer in self._flat.values():
            dist.broadcast(buffer, src=0)
        return iter(slot_views(self.slots, self._flat).items())

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def __getstate__(self) -> dict:
        return {"backend": self.backend, "address": self.address, "slots": self.slots, "totals": self.totals,
                "device": self.device, "world_size": self.world_size, "rank": self.rank}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


def _free_port(host: str) -> int:
    """A port the OS reports free now (the rendezvous binds it a moment later: a tiny race, as in torchrun)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
