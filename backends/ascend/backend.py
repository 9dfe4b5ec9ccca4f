"""Ascend NPU backend: HCCL collectives, npu_fusion_attention kernel, NPU allocator statistics.

`torch_npu` is imported here and only here, lazily: importing it registers the `npu` device with torch.
Unverified on hardware in this repository (no CANN toolkit on the development machines); written against
torch_npu's documented API (`torch.npu.*` mirrors `torch.cuda.*`).
"""
from __future__ import annotations

import configparser
import importlib.util
import os
from pathlib import Path

import torch

from backends.base import PeakTable, peak_from_table

# Peak dense TFLOP/s of one NPU as torch_npu counts devices, used when CANN's platform config of the SoC (read
# first: `platform_config_peak`) is not found. Huawei publishes no per-SKU datasheet figure for the 910B
# variants; the 910B rows are the figures commonly reported for them, not verified here (CANN's own
# Ascend910B2.ini, 24 AI cores with a 16x16x16 cube at 1800 MHz, gives 353.9 for the B2, not 376). 910C (SoC
# names Ascend910_93xx): Huawei's CloudMatrix384 paper (arXiv 2506.12708) gives 752 TFLOP/s dense BF16/FP16 per
# 910C package of two dies, and each die is one device to torch_npu: 376 each. No fp32 figures: MFU of a
# float32 run on an NPU is null.
PEAK_TFLOPS: PeakTable = (
    (("Ascend910B1",), {"bf16": 414.0, "fp16": 414.0}),
    (("Ascend910B2",), {"bf16": 376.0, "fp16": 376.0}),
    (("Ascend910B3",), {"bf16": 313.0, "fp16": 313.0}),
    (("Ascend910B4",), {"bf16": 280.0, "fp16": 280.0}),
    (("Ascend910_93",), {"bf16": 376.0, "fp16": 376.0}),
)
_DEFAULT_CANN_HOME = "/usr/local/Ascend/ascend-toolkit/latest"


def _torch_npu():
    import torch_npu  # noqa: F401  (registers torch.npu and the "npu" device type)

    return torch.npu


def platform_config_peak(soc: str, dtype: torch.dtype) -> float | None:
    """fp16/bf16 peak FLOP/s from CANN's platform config of `soc` (`<CANN>/*/data/platform_config/<soc>.ini`,
    CANN being $ASCEND_HOME_PATH, $ASCEND_TOOLKIT_HOME or the default install): cube cores x m*n*k
    multiply-adds x 2 FLOPs x cube clock. None for other dtypes, or when no readable file is found."""
    if dtype not in (torch.float16, torch.bfloat16):
        return None
    home = Path(os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME") or _DEFAULT_CANN_HOME)
    for ini in sorted(home.glob(f"*/data/platform_config/{soc}.ini")):
        parser = configparser.ConfigParser(interpolation=None, strict=False, inline_comment_prefixes=("#", ";"))
        try:
            parser.read(ini, encoding="utf-8")
            cores = parser.getint("SoCInfo", "cube_core_cnt", fallback=0) or parser.getint("SoCInfo", "ai_core_cnt")
            spec = parser["AICoreSpec"]
            mnk = int(spec["cube_m_size"]) * int(spec["cube_n_size"]) * int(spec["cube_k_size"])
            return cores * mnk * 2 * int(spec["cube_freq"]) * 1e6
        except (configparser.Error, KeyError, ValueError, UnicodeDecodeError):
            continue
    return None


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

    def rollout_device(self, index: int = -1, trainer_devices: int = 1) -> torch.device:
        """NPU `index`, or with -1 the first NPU after the trainer ranks': HCCL, like NCCL, needs the two
        sides of the weight broadcast on different devices."""
        count = _torch_npu().device_count()
        index = trainer_devices if index < 0 else index
        if index >= count or count < 2:
            raise RuntimeError(f"pipeline.placement=split on Ascend needs the rollout worker on an NPU of its own "
                               f"(the weight sync is an HCCL broadcast); NPU {index} asked, {count} visible in "
                               f"{self.visible_devices_env}")
        return self.device(index)

    def weight_sync_method(self, rollout_device: torch.device | None = None) -> str:
        """"collective": an HCCL broadcast from the trainer's NPU to the rollout worker's (another NPU).
        Unverified: written to torch.distributed's documented API with torch_npu's "hccl" backend, never run
        on an NPU here. A torchrun rank already has its default process group, so the broadcast's own group
        cannot be made: under torchrun the rollout is colocated on rank 0 on Ascend for now."""
        import torch.distributed as dist

        if dist.is_initialized():
            raise RuntimeError("pipeline.placement=split under torchrun is not supported on Ascend yet (the HCCL "
                               "weight broadcast needs a process group of its own); use pipeline.placement=colocated")
        return "collective"

    def rng_state(self) -> dict:
        return {"npu": _torch_npu().get_rng_state_all()}

    def set_rng_state(self, state: dict) -> None:
        if "npu" in state:
            _torch_npu().set_rng_state_all(state["npu"])

    def device_name(self) -> str:
        """The SoC name torch_npu reports, e.g. "Ascend910B3" or "Ascend910_9392" (one die of a 910C)."""
        return _torch_npu().get_device_name(0)

    def device_count(self) -> int:
        return _torch_npu().device_count()

    def peak_flops(self, dtype: torch.dtype) -> float | None:
        """CANN's platform config of this SoC when it is found, else the `PEAK_TFLOPS` row."""
        name = self.device_name()
        return platform_config_peak(name, dtype) or peak_from_table(name, dtype, PEAK_TFLOPS)

    def runtime_versions(self) -> dict[str, str]:
        """torch_npu's version and CANN's (`torch_npu.npu.utils.get_cann_version`, documented from CANN
        8.1.RC1; older installs may expose `torch.version.cann` instead)."""
        _torch_npu()
        import torch_npu

        versions = {"torch_npu": str(getattr(torch_npu, "__version__", "unknown"))}
        try:
            from torch_npu.npu.utils import get_cann_version

            cann = get_cann_version(module="CANN")
        except (ImportError, AttributeError, RuntimeError):
            cann = None
        versions["cann"] = str(cann or getattr(torch.version, "cann", None) or "unknown")
        return versions
