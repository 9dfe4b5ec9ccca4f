"""Weight-sync transports (engine/rollout/fleet/transports.py) built from the method each backend names."""
from __future__ import annotations

import pytest
import torch

from backends import get_backend
from backends.ascend.backend import AscendBackend
from backends.cuda.backend import CudaBackend
from engine.rollout.fleet.transports import make_transport


def test_cpu_weight_sync_goes_through_shared_memory_buffers():
    transport = make_transport(get_backend("cpu"), torch.device("cpu"))
    assert transport.name == "shared_memory"
    weights = [("w", torch.randn(3, 4)), ("b", torch.randn(4)), ("steps", torch.arange(3))]
    sender, (receiver,) = transport.connect(weights, [torch.device("cpu")])
    assert all(buffer.is_shared() for buffer in receiver.flat.values())  # one buffer per dtype
    assert len(receiver.flat) == 2
    sender.send([(name, t + 1) for name, t in weights])
    received = dict(receiver.receive())
    for name, tensor in weights:
        assert torch.equal(received[name], tensor + 1)
    with pytest.raises(KeyError, match="'other'"):
        sender.send([("other", torch.zeros(1))])
    with pytest.raises(ValueError, match="shape"):
        sender.send([("b", torch.zeros(5))])


def test_cuda_weight_sync_picks_a_broadcast_only_when_the_worker_has_its_own_gpu(monkeypatch):
    """Unverified on hardware: which transport the CUDA backend names (constructing one touches no device)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert CudaBackend().rollout_device() == torch.device("cuda", 0)
    assert make_transport(CudaBackend(), CudaBackend().rollout_device()).name == "device_ipc"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert CudaBackend().rollout_device() == torch.device("cuda", 1)
    assert make_transport(CudaBackend(), CudaBackend().rollout_device()).name == "nccl_broadcast"


def test_cuda_weight_sync_under_torchrun_uses_ipc(monkeypatch):
    """A torchrun rank already holds the default process group; the NCCL broadcast would need a second one."""
    import torch.distributed as dist

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    assert make_transport(CudaBackend(), torch.device("cuda", 6)).name == "device_ipc"


def test_ascend_names_an_hccl_broadcast():
    """Unverified on hardware: the Ascend backend names HCCL, and refuses it under torchrun."""
    assert make_transport(AscendBackend(), None).name == "hccl_broadcast"  # torch.device("npu") needs torch_npu
