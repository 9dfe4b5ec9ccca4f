"""The backend interface. Each backend (cpu, cuda, ascend) implements it without inheritance."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import torch


class WeightSender(Protocol):
    """Trainer side of a weight-sync transport (backends/weight_sync.py)."""

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Publish these values; on return the worker may read them (it is told so by a version message)."""
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
    name: str  # "shared_memory" | "cuda_ipc" | "nccl_broadcast" | "hccl_broadcast"

    def connect(self, named_tensors: Iterable[tuple[str, torch.Tensor]],
                receiver_device: torch.device) -> tuple[WeightSender, WeightReceiver]:
        """Allocate, once, what syncing tensors of these names, shapes and dtypes needs."""
        ...


class Backend(Protocol):
    name: str  # "cpu" | "cuda" | "ascend"
    device_type: str  # torch device type: "cpu" | "cuda" | "npu"
    collective_backend: str  # torch.distributed backend: gloo | nccl | hccl
    visible_devices_env: str  # environment variable that restricts visible devices ("" on CPU)
    attention_kernel: str  # name in kernels.shared_prompt_attention.KERNELS used by this backend

    @classmethod
    def is_present(cls) -> bool:
        """True when this machine has the runtime and at least one device for this backend."""
        ...

    def check_available(self) -> None:
        """Raise RuntimeError with a clear message when the backend cannot run here."""
        ...

    def device(self, local_rank: int = 0) -> torch.device: ...

    def supports_dtype(self, dtype: torch.dtype) -> bool: ...

    def seed_all(self, seed: int) -> None:
        """Seed every random generator the backend uses (torch CPU generator included)."""
        ...

    def synchronize(self) -> None:
        """Wait for queued device work, so wall-clock stage timings are true."""
        ...

    def memory_stats(self) -> dict[str, int]:
        """Bytes: `allocated`, `peak_allocated` (since the last reset), `reserved` where known."""
        ...

    def reset_peak_memory(self) -> None: ...

    def set_threads(self, threads: int) -> None:
        """Set the host's intra-op thread count (0 keeps torch's default)."""
        ...

    def rollout_device(self) -> torch.device:
        """Where a split rollout worker generates: the device after the trainer's when there is one."""
        ...

    def weight_sync_transport(self) -> WeightSyncTransport:
        """How weights reach a rollout worker in another process (pipeline.placement=split), from the trainer's
        device to `rollout_device()`."""
        ...

    def rng_state(self) -> dict:
        """The backend's device RNG state, for checkpoints (empty on CPU: torch's CPU state is saved apart)."""
        ...

    def set_rng_state(self, state: dict) -> None: ...
