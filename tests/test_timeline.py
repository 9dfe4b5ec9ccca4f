"""The pipeline/* metrics from spans (engine/timeline.py), on hand-made timelines."""
from __future__ import annotations

import pytest

from engine import metrics as M
from engine.metrics import Span
from engine.timeline import intersect, pipeline_metrics, union


def test_union_and_intersection_of_intervals():
    assert union([(3, 4), (0, 1), (0.5, 2), (2, 2.5), (5, 5)]) == [(0, 2.5), (3, 4)]
    assert intersect([(0, 2), (3, 6)], [(1, 4), (5, 7)]) == [(1, 2), (3, 4), (5, 6)]
    assert intersect([(0, 1)], [(1, 2)]) == []


def test_a_sync_iteration_has_no_overlap():
    #  trainer: sync 0-1, waits 1-5, score+train 5-8, step 8-9;  rollout: load 0.5-1, generate 1-5
    trainer = [Span("trainer", "sync_weights", 0, 1), Span("trainer", "rollout", 1, 5),
               Span("trainer", "score", 5, 5.5), Span("trainer", "train", 5.5, 8), Span("trainer", "step", 8, 9)]
    rollout = [Span("rollout", "load_weights", 0.5, 1), Span("rollout", "generate", 1, 5)]
    got = pipeline_metrics(trainer, rollout, (0, 10))
    assert got == {M.GEN_BUSY_S: 4, M.GEN_IDLE_S: 6, M.TRAIN_BUSY_S: 4, M.TRAIN_IDLE_S: 6, M.SYNC_S: 1,
                   M.OVERLAP_FRAC: 0.0}


def test_overlap_is_the_hidden_share_of_the_shorter_phase():
    # generate 1-5; the trainer works 2-3 and 4-6 (2 of its 3 busy seconds inside generation)
    trainer = [Span("trainer", "train", 2, 3), Span("trainer", "score", 4, 4.5), Span("trainer", "train", 4.5, 6)]
    rollout = [Span("rollout", "generate", 1, 5), Span("rollout", "generate", 9, 12)]  # the second is clipped
    got = pipeline_metrics(trainer, rollout, (0, 10))
    assert got[M.GEN_BUSY_S] == 5 and got[M.TRAIN_BUSY_S] == 3
    assert got[M.OVERLAP_FRAC] == pytest.approx(2 / 3)
    assert pipeline_metrics([], rollout, (0, 10))[M.OVERLAP_FRAC] == 0.0


def test_the_bench_replays_a_sync_iteration_through_the_periodic_schedule():
    from engine.bench.pipeline import replayed_iteration_s

    # sync 0-1; groups arrive at 2, 3 and 6 (the stream ends at 6.5); scores take 0.1 s, a micro-batch's train
    # 0.9 s, the step 0.5 s. One group a micro-batch: 2-3, 3-4, 6-7, step: 7.5 instead of 10.
    t = [Span("trainer", "sync_weights", 0, 1), Span("trainer", "rollout", 1, 2), Span("trainer", "rollout", 2, 3),
         Span("trainer", "rollout", 3, 6), Span("trainer", "rollout", 6, 6.5)]
    scores = [Span("trainer", "score", 6.5 + i, 6.6 + i) for i in range(3)]
    trains = [Span("trainer", "train", 6.6 + i, 7.5 + i) for i in range(3)]
    step = [Span("trainer", "step", 9.5, 10)]
    assert replayed_iteration_s((0, 10), t + scores + trains + step, group_size=4, micro_batch_size=4) == pytest.approx(7.5)
    # Two groups a micro-batch (two train spans): the first waits for the group arriving at 3: 3-4.1, 6-7, step.
    assert replayed_iteration_s((0, 10), t + scores + trains[:2] + step, 4, 8) == pytest.approx(7.5)


def test_engine_busy_is_the_union_of_a_lanes_generate_spans():
    from engine.metrics import ENGINE_BUSY_PREFIX, Span
    from engine.timeline import engine_busy

    spans = [Span("rollout-0", "generate", 0.0, 2.0), Span("rollout-0", "generate", 1.0, 3.0),  # overlap: 3 s
             Span("rollout-0", "generate", 5.0, 6.0), Span("rollout-0", "load_weights", 6.0, 9.0),
             Span("rollout-1", "generate", 0.0, 1.0), Span("rollout-1", "generate", 1.0, 1.5)]  # disjoint: the sum
    assert engine_busy(spans) == {ENGINE_BUSY_PREFIX + "rollout-0": 4.0, ENGINE_BUSY_PREFIX + "rollout-1": 1.5}
