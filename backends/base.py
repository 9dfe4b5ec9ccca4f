"""The backend interface. Each backend (cpu, cuda, ascend) implements it without inheritance."""
from __future__ import annotations

from typing import Protocol

import torch


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

    def rng_state(self) -> dict:
        """The backend's device RNG state, for checkpoints (empty on CPU: torch's CPU state is saved apart)."""
        ...

    def set_rng_state(self, state: dict) -> None: ...
