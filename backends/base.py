"""The backend interface. Each backend (cpu, cuda, ascend) implements it without inheritance."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
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

    def rollout_device(self, index: int = -1, trainer_devices: int = 1) -> torch.device:
        """Where a split rollout worker generates: local device `index` (pipeline.rollout_device), or with -1
        the first device after this node's `trainer_devices` trainer ranks when there is one."""
        ...

    def weight_sync_method(self, rollout_device: torch.device) -> str:
        """How weights reach a rollout worker in another process (pipeline.placement=split), from the trainer's
        device to `rollout_device`: "shared_memory" (host buffers), "device_ipc" (buffers on the trainer's
        device that the worker maps), or "collective" (a broadcast over `collective_backend`). The transports
        themselves live in engine/rollout/fleet/transports.py: they need no vendor API beyond these names."""
        ...

    def rng_state(self) -> dict:
        """The backend's device RNG state, for checkpoints (empty on CPU: torch's CPU state is saved apart)."""
        ...

    def set_rng_state(self, state: dict) -> None: ...

    # ------------------------------------------------------------------ what a benchmark report records
    def device_name(self) -> str:
        """The device's model as its runtime names it ("NVIDIA H200", "Ascend910B3"; on cpu the host CPU's
        model): the key `peak_flops` looks up."""
        ...

    def device_count(self) -> int:
        """Devices of this backend visible to this process (1 on cpu: the host)."""
        ...

    def peak_flops(self, dtype: torch.dtype) -> float | None:
        """The vendor's peak dense FLOP/s of one device (no structured sparsity) for matrix multiplies in
        `dtype`, or None when unknown: the denominator of model FLOP utilisation (engine/bench/e2e.py)."""
        ...

    def runtime_versions(self) -> dict[str, str]:
        """Versions of the vendor software under torch (CUDA and cuDNN; CANN and torch_npu); {} on cpu."""
        ...


# Peak dense TFLOP/s per device model: (substrings that must all occur in `device_name()`, {dtype key: TFLOP/s}).
# Tables list specific models before general ones (the first match wins). Dtype keys: "bf16", "fp16", "fp32".
PeakTable = Sequence[tuple[tuple[str, ...], Mapping[str, float]]]
DTYPE_KEYS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def peak_from_table(device_name: str, dtype: torch.dtype, table: PeakTable) -> float | None:
    """FLOP/s of the first row of `table` whose substrings all occur in `device_name`, for `dtype`; None when no
    row matches or the row has no figure for that dtype."""
    key = DTYPE_KEYS.get(dtype)
    for substrings, tflops in table:
        if all(s in device_name for s in substrings):
            return tflops[key] * 1e12 if key in tflops else None
    return None
