"""engine/build.py: the choices made while wiring a run (in-flight windows, every rank's vLLM device)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.build import in_flight_window, rank_vllm_devices
from engine.config import ConfigError, load_config
from engine.parallel.dist import DistEnv


def _cfg(**values):
    return load_config(None, ["model.path=x", *(f"{k}={v}" for k, v in values.items())])


def _waves(cfg, window: int) -> int:
    """Waves each worker's share of the iteration's prompts takes at `window` prompts in flight."""
    share = -(-cfg.rollout.prompts_per_iteration // cfg.pipeline.worker_count)
    return -(-share // window)


@pytest.mark.parametrize("workers", [1, 2])
def test_periodic_async_deals_each_worker_its_prompts_in_two_waves_where_sync_fills_the_engine(workers):
    # B=8, G=8, every sequence fits the engine (64 rows): sync takes one wave, periodic_async two, so the
    # trainer trains on the first wave while the second generates even when all responses are equally long
    common = {"rollout.prompts_per_iteration": 8, "rollout.group_size": 8, "rollout.max_batch_sequences": 64,
              "optim.micro_batch_size": 16, "pipeline.placement": "split", "pipeline.rollout_workers": workers}
    sync = _cfg(**common, **{"pipeline.schedule": "sync"})
    overlapped = _cfg(**common, **{"pipeline.schedule": "periodic_async"})
    assert _waves(sync, in_flight_window(sync)) == 1
    assert _waves(overlapped, in_flight_window(overlapped)) == 2


def test_the_window_stays_within_the_engine_and_takes_at_least_a_micro_batch():
    common = {"rollout.prompts_per_iteration": 8, "rollout.group_size": 8, "pipeline.placement": "split",
              "pipeline.schedule": "periodic_async"}
    assert in_flight_window(_cfg(**common, **{"rollout.max_batch_sequences": 16})) == 2  # the engine's rows
    # a micro-batch of 8 groups trains only once all 8 are in: a smaller wave would overlap nothing
    assert in_flight_window(_cfg(**common, **{"rollout.max_batch_sequences": 64, "optim.micro_batch_size": 64})) == 8
    assert in_flight_window(_cfg(**common, **{"rollout.in_flight": 3})) == 3  # the recipe's own choice


def test_every_ranks_vllm_engine_takes_that_ranks_device(monkeypatch):
    cfg = _cfg(**{"rollout.engine": "vllm"})
    rank1 = DistEnv(rank=1, world_size=2, local_rank=1, local_world_size=2)
    cuda, cpu = SimpleNamespace(visible_devices_env="CUDA_VISIBLE_DEVICES"), SimpleNamespace(visible_devices_env="")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert rank_vllm_devices(cfg, cuda, rank1) == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert rank_vllm_devices(cfg, cuda, rank1) == "5"  # the rank's device among those the launch was given
    assert rank_vllm_devices(cfg, cpu, rank1) == ""  # on the CPU vLLM's default placement
    assert rank_vllm_devices(cfg, cuda, None) == ""  # one process: rollout.vllm.devices as given
    with pytest.raises(ConfigError, match="rollout.vllm.devices: when every torchrun rank generates"):
        rank_vllm_devices(_cfg(**{"rollout.engine": "vllm", "rollout.vllm.devices": "0"}), cuda, rank1)
