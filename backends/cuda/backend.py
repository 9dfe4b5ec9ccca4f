"""CUDA backend: NCCL collectives, FlexAttention shared-prompt kernel, CUDA caching-allocator statistics."""
from __future__ import annotations

import torch

from backends.base import PeakTable, peak_from_table

# Peak dense TFLOP/s (no 2:4 sparsity) from NVIDIA's datasheets, matched against torch's device name. bf16/fp16:
# tensor cores with float32 accumulation (what torch's matmuls use); fp32: the non-tensor FP32 figure, since
# torch's default float32 matmul precision ("highest") does not use TF32. Where a datasheet quotes only the
# sparse tensor figure, the dense one here is half of it.
PEAK_TFLOPS: PeakTable = (
    # H100 NVL datasheet: FP32 60, BF16/FP16 1,671 sparse
    (("H100", "NVL"), {"bf16": 835.5, "fp16": 835.5, "fp32": 60.0}),
    # H100 PCIe datasheet: FP32 51, BF16/FP16 1,513 sparse
    (("H100", "PCIe"), {"bf16": 756.5, "fp16": 756.5, "fp32": 51.0}),
    # H100 SXM5 datasheet ("NVIDIA H100 80GB HBM3"): FP32 67, BF16/FP16 1,979 sparse
    (("H100",), {"bf16": 989.5, "fp16": 989.5, "fp32": 67.0}),
    # H800 SXM: the H100 SXM's compute (its interconnect is what differs)
    (("H800",), {"bf16": 989.5, "fp16": 989.5, "fp32": 67.0}),
    # H200 NVL datasheet: FP32 60, BF16/FP16 1,671 sparse
    (("H200", "NVL"), {"bf16": 835.5, "fp16": 835.5, "fp32": 60.0}),
    # H200 SXM datasheet: FP32 67, BF16/FP16 1,979 sparse
    (("H200",), {"bf16": 989.5, "fp16": 989.5, "fp32": 67.0}),
    # H20 datasheet: FP32 44, BF16/FP16 148 dense
    (("H20",), {"bf16": 148.0, "fp16": 148.0, "fp32": 44.0}),
    # A100 datasheet (SXM and PCIe, 40 and 80 GB): FP32 19.5, BF16/FP16 312 dense; A800 has the same compute
    (("A100",), {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    (("A800",), {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    # L40S datasheet: FP32 91.6, BF16/FP16 362.05 dense (733 sparse)
    (("L40S",), {"bf16": 362.05, "fp16": 362.05, "fp32": 91.6}),
    # L40 datasheet: FP32 90.5, BF16/FP16 362.1 sparse
    (("L40",), {"bf16": 181.05, "fp16": 181.05, "fp32": 90.5}),
    # L4 datasheet: FP32 30.3, BF16/FP16 242 sparse
    (("L4",), {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    # GeForce RTX 4090, Ada whitepaper (appendix): FP32 82.6; FP16/BF16 tensor with FP32 accumulate 165.2 dense
    (("RTX 4090",), {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6}),
    # HGX B200 datasheet: FP16/BF16 36 PFLOPS sparse for 8 GPUs (2.25 dense each); FP32 not tabulated here
    (("B200",), {"bf16": 2250.0, "fp16": 2250.0}),
)


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

    def rollout_device(self, index: int = -1, trainer_devices: int = 1) -> torch.device:
        """GPU `index`; -1: the first GPU after the trainer ranks' when there is one, else GPU 0 (shared with
        the trainer, time-sliced)."""
        count = torch.cuda.device_count()
        if index < 0:
            index = trainer_devices if count > trainer_devices else 0
        if index >= count:
            raise ValueError(f"pipeline.rollout_device: GPU {index}, but {count} are visible "
                             f"({self.visible_devices_env})")
        return self.device(index)

    def weight_sync_method(self, rollout_device: torch.device | None = None) -> str:
        """"collective": an NCCL broadcast from the trainer's GPU to the rollout worker's (NCCL needs two GPUs),
        when the worker has a GPU of its own and this process has no process group yet (a torchrun rank
        already has one, and a process has only one default group); else "device_ipc": CUDA IPC buffers on
        the trainer's GPU that the worker reads from (same node, any GPU)."""
        import torch.distributed as dist

        own_gpu = (rollout_device or self.rollout_device()) != self.device()
        return "collective" if own_gpu and not dist.is_initialized() else "device_ipc"

    def rng_state(self) -> dict:
        return {"cuda": torch.cuda.get_rng_state_all()}

    def set_rng_state(self, state: dict) -> None:
        if "cuda" in state:
            torch.cuda.set_rng_state_all(state["cuda"])

    def device_name(self) -> str:
        return torch.cuda.get_device_name(0)

    def device_count(self) -> int:
        return torch.cuda.device_count()

    def peak_flops(self, dtype: torch.dtype) -> float | None:
        return peak_from_table(self.device_name(), dtype, PEAK_TFLOPS)

    def runtime_versions(self) -> dict[str, str]:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        return {"cuda": str(torch.version.cuda), "cudnn": str(cudnn)}
