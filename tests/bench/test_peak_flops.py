"""Backend.device_name / peak_flops / runtime_versions (the figures an e2e report records), without hardware:
the CUDA runtime's device name is patched, torch_npu is faked as in tests/backends/test_backends.py."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from backends import get_backend
from backends.ascend import backend as ascend
from backends.base import peak_from_table
from backends.cuda import backend as cuda


def test_cpu_backend_has_a_name_and_no_peak():
    backend = get_backend("cpu")
    assert isinstance(backend.device_name(), str) and backend.device_name()
    assert backend.device_count() == 1
    assert backend.peak_flops(torch.bfloat16) is None  # MFU is null on the CPU
    assert backend.runtime_versions() == {}


@pytest.mark.parametrize("name, dtype, tflops", [
    ("NVIDIA H200", torch.bfloat16, 989.5),
    ("NVIDIA H200", torch.float32, 67.0),
    ("NVIDIA H200 NVL", torch.float16, 835.5),
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.5),
    ("NVIDIA H100 PCIe", torch.bfloat16, 756.5),
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0),
    ("NVIDIA L40S", torch.bfloat16, 362.05),
    ("NVIDIA L40", torch.bfloat16, 181.05),
    ("NVIDIA GeForce RTX 4090", torch.float16, 165.2),
    ("NVIDIA H20", torch.bfloat16, 148.0),
])
def test_cuda_peak_by_device_name(monkeypatch, name, dtype, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert cuda.CudaBackend().peak_flops(dtype) == pytest.approx(tflops * 1e12)


def test_unknown_devices_and_dtypes_have_no_peak(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert cuda.CudaBackend().peak_flops(torch.bfloat16) is None
    assert peak_from_table("NVIDIA B200", torch.float32, cuda.PEAK_TFLOPS) is None  # no figure for that dtype
    assert peak_from_table("NVIDIA H200", torch.float64, cuda.PEAK_TFLOPS) is None


@pytest.fixture
def fake_npu(monkeypatch, tmp_path):
    """A torch_npu that follows its documentation: torch.npu.get_device_name / device_count, __version__,
    torch_npu.npu.utils.get_cann_version. CANN's home is an empty folder unless a test writes a platform config."""
    npu = types.SimpleNamespace(is_available=lambda: True, get_device_name=lambda device=None: "Ascend910B3",
                                device_count=lambda: 8)
    module = types.ModuleType("torch_npu")
    module.__version__ = "2.10.0.post4"
    utils = types.ModuleType("torch_npu.npu.utils")
    utils.get_cann_version = lambda module="CANN": "8.3.RC1"
    monkeypatch.setitem(sys.modules, "torch_npu", module)
    monkeypatch.setitem(sys.modules, "torch_npu.npu", types.ModuleType("torch_npu.npu"))
    monkeypatch.setitem(sys.modules, "torch_npu.npu.utils", utils)
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    monkeypatch.setenv("ASCEND_HOME_PATH", str(tmp_path))
    return tmp_path


@pytest.mark.ascend
def test_ascend_name_versions_and_table_peak(fake_npu):
    backend = get_backend("ascend")
    assert backend.device_name() == "Ascend910B3"
    assert backend.device_count() == 8
    assert backend.runtime_versions() == {"torch_npu": "2.10.0.post4", "cann": "8.3.RC1"}
    assert backend.peak_flops(torch.bfloat16) == pytest.approx(313e12)  # no platform config: the table
    assert backend.peak_flops(torch.float32) is None


@pytest.mark.ascend
def test_ascend_peak_from_cann_platform_config(fake_npu):
    """CANN's own platform config of the SoC wins over the table: cores x 16^3 multiply-adds x 2 x clock."""
    folder = fake_npu / "aarch64-linux" / "data" / "platform_config"
    folder.mkdir(parents=True)
    (folder / "Ascend910B3.ini").write_text(
        "[version]\nSoC_version=Ascend910B3\n\n[SoCInfo]\nai_core_cnt=20\ncube_core_cnt=20\nvector_core_cnt=40\n\n"
        "[AICoreSpec]\ncube_freq=1800\ncube_m_size=16\ncube_n_size=16\ncube_k_size=16\n", encoding="utf-8")
    backend = get_backend("ascend")
    assert backend.peak_flops(torch.float16) == pytest.approx(20 * 16**3 * 2 * 1800e6)
    assert backend.peak_flops(torch.float32) is None


def test_ascend_910c_die_and_unreadable_configs(monkeypatch, tmp_path):
    assert peak_from_table("Ascend910_9392", torch.bfloat16, ascend.PEAK_TFLOPS) == pytest.approx(376e12)
    monkeypatch.setenv("ASCEND_HOME_PATH", str(tmp_path))
    assert ascend.platform_config_peak("Ascend910B3", torch.bfloat16) is None  # no file
    folder = tmp_path / "compiler" / "data" / "platform_config"
    folder.mkdir(parents=True)
    (folder / "Ascend910B3.ini").write_text("[SoCInfo]\nai_core_cnt=20\n", encoding="utf-8")  # no [AICoreSpec]
    assert ascend.platform_config_peak("Ascend910B3", torch.bfloat16) is None
