from __future__ import annotations

import sys
import types

import pytest
import torch

from backends import detect, get_backend
from backends.ascend.backend import AscendBackend
from backends.cuda.backend import CudaBackend


def test_cpu_backend_basics():
    backend = get_backend("cpu")
    assert backend.device() == torch.device("cpu")
    assert backend.collective_backend == "gloo"
    backend.seed_all(3)
    a = torch.rand(3)
    backend.seed_all(3)
    assert torch.equal(a, torch.rand(3))
    assert backend.memory_stats()["peak_allocated"] > 0


def test_unknown_backend_names_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed: auto, cpu, cuda, ascend"):
        get_backend("tpu")


def test_auto_falls_back_to_cpu_without_accelerators(monkeypatch):
    monkeypatch.setattr(CudaBackend, "is_present", classmethod(lambda cls: False))
    monkeypatch.setattr(AscendBackend, "is_present", classmethod(lambda cls: False))
    assert detect() == "cpu"


def test_cuda_backend_reports_a_clear_error_without_a_gpu(monkeypatch):
    monkeypatch.setattr(CudaBackend, "is_present", classmethod(lambda cls: False))
    with pytest.raises(RuntimeError, match="no CUDA device"):
        get_backend("cuda")


def test_ascend_without_torch_npu_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # import fails as on a machine without it
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(RuntimeError, match="needs torch_npu"):
        get_backend("ascend")


@pytest.mark.ascend
def test_ascend_backend_with_a_faked_torch_npu(monkeypatch):
    """Unverified on hardware: checks only that the backend calls the documented torch.npu API."""
    calls = []
    npu = types.SimpleNamespace(
        is_available=lambda: True, manual_seed_all=lambda s: calls.append(("seed", s)),
        synchronize=lambda: calls.append("sync"), memory_allocated=lambda: 1,
        max_memory_allocated=lambda: 2, memory_reserved=lambda: 3)
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    backend = get_backend("ascend")
    backend.seed_all(5)
    backend.synchronize()
    assert backend.collective_backend == "hccl"
    assert backend.visible_devices_env == "ASCEND_RT_VISIBLE_DEVICES"
    assert backend.memory_stats() == {"allocated": 1, "peak_allocated": 2, "reserved": 3}
    assert calls == [("seed", 5), "sync"]


def test_placement_names_the_rollout_gpu_after_the_trainer_ranks(monkeypatch):
    """6 + 2 on an 8-GPU node: torchrun --nproc-per-node 6, the rollout worker on local GPU 6 (by default or
    by pipeline.rollout_device); a GPU that is not there is an error naming the key."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert CudaBackend().rollout_device(-1, trainer_devices=6) == torch.device("cuda", 6)
    assert CudaBackend().rollout_device(7, trainer_devices=6) == torch.device("cuda", 7)
    with pytest.raises(ValueError, match="pipeline.rollout_device: GPU 8, but 8 are visible"):
        CudaBackend().rollout_device(8, trainer_devices=6)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert CudaBackend().rollout_device(-1, trainer_devices=1) == torch.device("cuda", 0)  # shared, time-sliced
