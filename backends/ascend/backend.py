"""Ascend NPU backend: HCCL collectives, npu_fusion_attention kernel, NPU allocator statistics.

`torch_npu` is imported here and only here, lazily: importing it registers the `npu` device with torch.
Unverified on hardware in this repository (no CANN toolkit on the development machines); written against
torch_npu's documented API (`torch.npu.*` mirrors `torch.cuda.*`).
"""
from __future__ import annotations

import importlib.util

import torch

from backends.weight_sync import CollectiveBroadcastTransport


def _torch_npu():
    import torch_npu  # noqa: F401  (registers torch.npu and the "npu" device type)

    return torch.npu


class AscendBackend:
    name = "ascend"
    device_type = "npu"
    collective_backend = "hccl"
    visible_devices_env = "ASCEND_RT_VISIBLE_DEVICES"
    attention_kernel = "npu"

    @classmethod
    def is_present(cls) -> bool:
        if importlib.util.find_spec("torch_npu") is None:
            return False
        try:
            return _torch_npu().is_available()
        except Exception:  # torch_npu installed without CANN raises at import; then there is no NPU
            return False

    def check_available(self) -> None:
        if importlib.util.find_spec("torch_npu") is None:
            raise RuntimeError("backend.name=ascend needs torch_npu (pip install 'cadence[ascend]' in a CANN environment)")
        try:
            npu = _torch_npu()
        except Exception as exc:
            raise RuntimeError(f"backend.name=ascend: importing torch_npu failed ({exc}); is CANN installed and sourced?") from exc
        if not npu.is_available():
            raise RuntimeError(f"backend.name=ascend but torch_npu sees no NPU (check {self.visible_devices_env})")

    def device(self, local_rank: int = 0) -> torch.device:
        return torch.device("npu", local_rank)

    def supports_dtype(self, dtype: torch.dtype) -> bool:
        return dtype in (torch.float32, torch.bfloat16, torch.float16)

    def seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)
        _torch_npu().manual_seed_all(seed)

    def synchronize(self) -> None:
        _torch_npu().synchronize()

    def memory_stats(self) -> dict[str, int]:
        npu = _torch_npu()
        return {"allocated": npu.memory_allocated(), "peak_allocated": npu.max_memory_allocated(),
                "reserved": npu.memory_reserved()}

    def reset_peak_memory(self) -> None:
        _torch_npu().reset_peak_memory_stats()

    def set_threads(self, threads: int) -> None:
        if threads > 0:
            torch.set_num_threads(threads)

    def rollout_device(self) -> torch.device:
        """The second NPU: HCCL, like NCCL, needs the two ranks on different devices."""
        if _torch_npu().device_count() < 2:
            raise RuntimeError("pipeline.placement=split on Ascend needs two NPUs (the weight sync is an HCCL "
                               f"broadcast between them); {self.visible_devices_env} shows fewer")
        return self.device(1)

    def weight_sync_transport(self) -> CollectiveBroadcastTransport:
        """HCCL broadcast from the trainer's NPU to the rollout worker's (another NPU). Unverified: written to
        torch.distributed's documented API with torch_npu's "hccl" backend, never run on an NPU here."""
        return CollectiveBroadcastTransport("hccl", f"{self.device_type}:0")

    def rng_state(self) -> dict:
        return {"npu": _torch_npu().get_rng_state_all()}

    def set_rng_state(self, state: dict) -> None:
        if "npu" in state:
            _torch_npu().set_rng_state_all(state["npu"])
