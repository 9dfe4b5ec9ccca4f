"""Per-iteration overlap metrics of the pipeline from timed spans (definitions: docs/pipeline.md).

Inputs are the trainer's stage spans (StageTimer, lane "trainer") and the rollout engine's busy spans (lane
"rollout"), on one clock. Everything is clipped to the iteration's window W = [start, end]:

    gen_busy    |union of rollout "generate" spans|          gen_idle    = |W| - gen_busy
    train_busy  |union of trainer spans of TRAINER_BUSY|     train_idle  = |W| - train_busy
    sync        |union of trainer "sync_weights" spans|
    overlap     |gen busy AND train busy| / min(gen_busy, train_busy)   (0 when either is 0)
"""
from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from engine import metrics as M
from engine.metrics import Span

TRAINER_BUSY = ("prompts", "score", "train", "step")  # "rollout" (waiting for groups) and "sync_weights" are not work
Interval = tuple[float, float]


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint intervals covering the same points."""
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """Points in both; `a` and `b` sorted and disjoint (as `union` returns them)."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if end > start:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def length(intervals: Iterable[Interval]) -> float:
    return sum(end - start for start, end in intervals)


def busy(spans: Iterable[Span], stages: tuple[str, ...], window: Interval) -> list[Interval]:
    """The union of the spans of `stages`, clipped to `window`."""
    lo, hi = window
    return union((max(s.start_s, lo), min(s.end_s, hi)) for s in spans if s.stage in stages)


def pipeline_metrics(trainer_spans: list[Span], rollout_spans: list[Span], window: Interval) -> dict[str, float]:
    """The `pipeline/*` metrics of one iteration (engine/metrics.py)."""
    gen = busy(rollout_spans, ("generate",), window)
    train = busy(trainer_spans, TRAINER_BUSY, window)
    total = window[1] - window[0]
    gen_s, train_s = length(gen), length(train)
    shorter = min(gen_s, train_s)
    return {M.GEN_BUSY_S: gen_s, M.GEN_IDLE_S: total - gen_s, M.TRAIN_BUSY_S: train_s,
            M.TRAIN_IDLE_S: total - train_s, M.SYNC_S: length(busy(trainer_spans, ("sync_weights",), window)),
            M.OVERLAP_FRAC: length(intersect(gen, train)) / shorter if shorter > 0 else 0.0}


def engine_busy(spans: Iterable[Span]) -> dict[str, float]:
    """`rollout/busy_s/<lane>` per engine lane: the length of the union of its "generate" spans (a server's
    concurrent requests overlap; an engine of ours has disjoint spans, whose union is their sum)."""
    by_lane: dict[str, list[Interval]] = {}
    for span in spans:
        if span.stage == "generate":
            by_lane.setdefault(span.lane, []).append((span.start_s, span.end_s))
    return {M.ENGINE_BUSY_PREFIX + lane: length(union(intervals)) for lane, intervals in by_lane.items()}


def append_timeline(path: Path, iteration: int, window: Interval, spans: list[Span]) -> None:
    """Append one iteration's spans to `timeline.jsonl` (what timeline.png is drawn from; after a resume an
    iteration can appear twice, the later line is the one that counts)."""
    record = {"iteration": iteration, "window": list(window), "spans": [list(span) for span in spans]}
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_timeline(path: Path) -> list[tuple[int, Interval, list[Span]]]:
    """(iteration, window, spans) per line of a `timeline.jsonl`."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        out.append((record["iteration"], tuple(record["window"]), [Span(*span) for span in record["spans"]]))
    return out


class TimelineRecorder:
    """Each iteration's spans, trainer's and rollout engines', on the trainer timer's clock: appended to
    `timeline.jsonl` as they come, the latest `keep` iterations drawn into `timeline.png` at the end."""

    def __init__(self, spans_file: Path, keep: int):
        self.spans_file = spans_file
        self.latest: deque[list[Span]] = deque(maxlen=keep)  # a whole run's bars would be too thin to read

    def record(self, iteration: int, window: Interval, trainer: list[Span], rollout: list[Span],
               origin: float) -> dict[str, float]:
        """The iteration's `pipeline/*` metrics. `rollout` spans are on perf_counter, shifted here by the
        timer's `origin`; `window` and `trainer` are already relative to it."""
        rollout = [s._replace(start_s=s.start_s - origin, end_s=s.end_s - origin) for s in rollout]
        self.latest.append(trainer + rollout)
        append_timeline(self.spans_file, iteration, window, trainer + rollout)
        return pipeline_metrics(trainer, rollout, window)

    def plot(self, path: Path, title: str) -> None:
        from engine.plots import plot_timeline

        # The trainer's `rollout` stage is waiting for groups: drawn as a gap, so idle time looks idle.
        spans = [s for spans in self.latest for s in spans if (s.lane, s.stage) != ("trainer", "rollout")]
        try:
            if spans:
                plot_timeline(spans, path, title=f"last {len(self.latest)} iterations: {title}")
        except ImportError:  # matplotlib is optional; a missing plot must not fail a finished run
            pass
