"""CPU backend: gloo collectives, the portable shared-prompt attention kernel, host memory statistics."""
from __future__ import annotations

import platform
import resource

import torch



class CpuBackend:
    name = "cpu"
    device_type = "cpu"
    collective_backend = "gloo"
    visible_devices_env = ""
    attention_kernel = "portable"

    @classmethod
    def is_present(cls) -> bool:
        return True

    def check_available(self) -> None:
        return None

    def device(self, local_rank: int = 0) -> torch.device:
        return torch.device("cpu")

    def supports_dtype(self, dtype: torch.dtype) -> bool:
        return dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64)

    def seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def synchronize(self) -> None:
        return None

    def memory_stats(self) -> dict[str, int]:
        # ru_maxrss is the process's peak resident set in KiB on Linux; CPU tensors have no allocator counters.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"allocated": 0, "peak_allocated": peak, "reserved": 0}

    def reset_peak_memory(self) -> None:
        return None

    def set_threads(self, threads: int) -> None:
        if threads > 0:
            torch.set_num_threads(threads)

    def rollout_device(self, index: int = -1, trainer_devices: int = 1) -> torch.device:
        return self.device()  # the split is by cores: pipeline.rollout_threads / trainer_threads

    def weight_sync_method(self, rollout_device: torch.device | None = None) -> str:
        """Shared-memory buffers, allocated once, copied into in place at each sync."""
        return "shared_memory"

    def rng_state(self) -> dict:
        return {}

    def set_rng_state(self, state: dict) -> None:
        return None

    def device_name(self) -> str:
        """The host CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine() or "cpu"

    def device_count(self) -> int:
        return 1

    def peak_flops(self, dtype: torch.dtype) -> float | None:
        return None  # a CPU's peak depends on its SIMD units, clocks and core count: not tabulated, MFU is null

    def runtime_versions(self) -> dict[str, str]:
        return {}
