"""CUDA backend: NCCL collectives, FlexAttention shared-prompt kernel, CUDA caching-allocator statistics."""
from __future__ import annotations

import torch

from backends.weight_sync import CollectiveBroadcastTransport, SharedBufferTransport


class CudaBackend:
    name = "cuda"
    device_type = "cuda"
    collective_backend = "nccl"
    visible_devices_env = "CUDA_VISIBLE_DEVICES"
    attention_kernel = "flex"

    @classmethod
    def is_present(cls) -> bool:
        return torch.cuda.is_available() and torch.cuda.device_count() > 0

    def check_available(self) -> None:
        if not self.is_present():
            raise RuntimeError("backend.name=cuda but torch sees no CUDA device (check the torch build and "
                               f"{self.visible_devices_env})")

    def device(self, local_rank: int = 0) -> torch.device:
        return torch.device("cuda", local_rank)

    def supports_dtype(self, dtype: torch.dtype) -> bool:
        if dtype == torch.bfloat16:
            return torch.cuda.is_bf16_supported()
        return dtype in (torch.float32, torch.float16, torch.float64)

    def seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)
        torch.cuda.manual_seed_all(seed)

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def memory_stats(self) -> dict[str, int]:
        return {"allocated": torch.cuda.memory_allocated(), "peak_allocated": torch.cuda.max_memory_allocated(),
                "reserved": torch.cuda.memory_reserved()}

    def reset_peak_memory(self) -> None:
        torch.cuda.reset_peak_memory_stats()

    def set_threads(self, threads: int) -> None:
        if threads > 0:
            torch.set_num_threads(threads)

    def rollout_device(self) -> torch.device:
        """The second GPU when there is one; with a single GPU both processes share it (time-sliced)."""
        return self.device(1 if torch.cuda.device_count() > 1 else 0)

    def weight_sync_transport(self, method: str = "auto") -> CollectiveBroadcastTransport | SharedBufferTransport:
        """"nccl": a broadcast from the trainer's GPU to the rollout worker's (NCCL needs two GPUs);
        "ipc": CUDA IPC buffers on the trainer's GPU that the worker reads from (same node, any GPU);
        "auto": nccl when the worker has a GPU of its own, else ipc."""
        if method == "auto":
            method = "nccl" if self.rollout_device() != self.device() else "ipc"
        if method == "nccl":
            return CollectiveBroadcastTransport("nccl", str(self.device()))
        if method == "ipc":
            return SharedBufferTransport("cuda_ipc", self.device(), self.synchronize)
        raise ValueError(f"unknown CUDA weight-sync method {method!r}; allowed: auto, nccl, ipc")

    def rng_state(self) -> dict:
        return {"cuda": torch.cuda.get_rng_state_all()}

    def set_rng_state(self, state: dict) -> None:
        if "cuda" in state:
            torch.cuda.set_rng_state_all(state["cuda"])
