"""Metric names and the stage timer."""
from __future__ import annotations

import pytest

from engine import metrics as M


def test_metric_names_are_unique_and_grouped():
    names = {k: v for k, v in vars(M).items() if k.isupper() and isinstance(v, str) and not k.startswith("_")}
    assert len(set(names.values())) == len(names), "two constants share a metric name"
    assert all("/" in v for k, v in names.items() if k != "ITERATION")


def test_stage_time_name():
    assert M.stage_time("rollout") == "time/rollout"
    for bad in ("", "a/b"):
        with pytest.raises(ValueError):
            M.stage_time(bad)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_timer_accumulates_per_stage_and_pop_resets():
    clock = FakeClock()
    timer = M.StageTimer(clock=clock)
    with timer.stage("rollout"):
        clock.now += 2.0
    with timer.stage("train"):
        clock.now += 0.5
    with timer.stage("rollout"):  # a second entry in the same iteration adds up
        clock.now += 1.0
    assert timer.pop() == {"time/rollout": 3.0, "time/train": 0.5}
    assert timer.pop() == {}


def test_timer_synchronizes_at_both_boundaries():
    calls = []
    clock = FakeClock()
    timer = M.StageTimer(synchronize=lambda: calls.append(clock.now), clock=clock)
    with timer.stage("step"):
        clock.now += 1.0
    assert calls == [0.0, 1.0]


def test_timer_counts_a_stage_that_raises():
    clock = FakeClock()
    timer = M.StageTimer(clock=clock)
    with pytest.raises(RuntimeError), timer.stage("score"):
        clock.now += 0.25
        raise RuntimeError("boom")
    assert timer.pop() == {"time/score": 0.25}


def test_timer_keeps_spans_for_the_timeline():
    clock = FakeClock()
    clock.now = 10.0
    timer = M.StageTimer(lane="trainer", keep_spans=True, clock=clock)
    clock.now += 1.0
    with timer.stage("train"):
        clock.now += 2.0
    assert timer.pop_spans() == [M.Span("trainer", "train", 1.0, 3.0)]
    assert timer.pop_spans() == []
    assert M.StageTimer().pop_spans() == []

