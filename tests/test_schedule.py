"""The controller's schedule helpers and the pipeline section of the recipe."""
from __future__ import annotations

import pytest

from engine.config import ConfigError, load_config
from engine.controller import micro_batches
from engine.group_stream import in_prompt_order
from helpers import random_groups


def test_micro_batches_are_handed_over_as_soon_as_full():
    handed: list[list[int]] = []
    arrived: list[int] = []

    def arrivals():
        for group in random_groups(5, 4, vocab=50):
            arrived.append(group.prompt.index)
            yield group

    for batch in micro_batches(arrivals(), max_sequences=8):
        handed.append([g.prompt.index for g in batch])
        assert arrived[-1] == handed[-1][-1]  # no waiting for the next group to learn the batch is full
    assert handed == [[0, 1], [2, 3], [4]]
    assert [[g.prompt.index for g in b] for b in micro_batches(random_groups(2, 4, 50), 3)] == [[0], [1]]


def test_in_prompt_order_buffers_early_arrivals():
    groups = random_groups(4, 2, vocab=50)
    prompts = [g.prompt for g in groups]
    released: list[tuple[int, int]] = []  # (arrivals so far, prompt released)
    arrived = 0

    def arrivals():
        nonlocal arrived
        for g in (groups[2], groups[0], groups[3], groups[1]):
            arrived += 1
            yield g

    for group in in_prompt_order(arrivals(), prompts):
        released.append((arrived, group.prompt.index))
    assert released == [(2, 0), (4, 1), (4, 2), (4, 3)]
    with pytest.raises(RuntimeError, match=r"without the groups of prompts \[3\]"):
        list(in_prompt_order(iter(groups[:3]), prompts))


def test_periodic_async_needs_the_split_placement():
    with pytest.raises(ConfigError, match="pipeline.schedule: periodic_async needs pipeline.placement=split"):
        load_config(None, ["model.path=m", "pipeline.schedule=periodic_async"])
    cfg = load_config(None, ["model.path=m", "pipeline.schedule=periodic_async", "pipeline.placement=split"])
    assert (cfg.pipeline.rollout_threads, cfg.pipeline.sync_timeout_s, cfg.pipeline.restart_rollout) == (1, 60.0, False)
    with pytest.raises(ConfigError, match="pipeline.rollout_threads: must be >= 1"):
        load_config(None, ["model.path=m", "pipeline.rollout_threads=0"])
    with pytest.raises(ConfigError, match="pipeline.placement: got 'remote'; allowed: colocated, split"):
        load_config(None, ["model.path=m", "pipeline.placement=remote"])
