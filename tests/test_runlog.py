"""The run folder's logs: metrics.jsonl, resume truncation, summary.json, the PNG plots."""
from __future__ import annotations

import json
import os

import pytest
import torch

from engine import metrics as M
from engine import runlog
from engine.plots import plot_timeline
from engine.runlog import RunLog, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _log_iterations(run_dir, first, last, start_iteration=0, total=10):
    log = RunLog(run_dir, total_iterations=total, start_iteration=start_iteration, progress=False)
    for k in range(first, last + 1):
        log.log(k, {M.REWARD_MEAN: k / 10, M.ACCURACY: k / 20})
    return log


def test_one_json_line_per_iteration(tmp_path):
    log = RunLog(tmp_path, total_iterations=3, progress=False)
    log.log(1, {M.REWARD_MEAN: 0.5, M.POLICY_VERSION: 1, M.LOSS: torch.tensor(0.25)})
    # The line is on disk before close: a killed run keeps what it logged.
    lines = (tmp_path / runlog.METRICS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"iteration": 1, M.REWARD_MEAN: 0.5, M.POLICY_VERSION: 1,
                                                    M.LOSS: 0.25}]
    log.close()


def test_non_finite_values_are_written_as_null(tmp_path):
    with RunLog(tmp_path, total_iterations=1, progress=False) as log:
        log.log(1, {M.LOSS: float("nan"), M.GRAD_NORM: float("inf")})
    assert read_metrics(tmp_path) == [{"iteration": 1, M.LOSS: None, M.GRAD_NORM: None}]
    with RunLog(tmp_path / "other", total_iterations=1, progress=False) as log, pytest.raises(TypeError):
        log.log(1, {M.LOSS: "high"})


def test_resume_drops_iterations_after_the_checkpoint(tmp_path):
    _log_iterations(tmp_path, 1, 5).close()  # killed after logging 5, last checkpoint at 3
    log = _log_iterations(tmp_path, 4, 6, start_iteration=3)
    assert [r["iteration"] for r in log.records()] == [1, 2, 3, 4, 5, 6]
    log.close()
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_fresh_run_starts_an_empty_file(tmp_path):
    _log_iterations(tmp_path, 1, 2).close()
    _log_iterations(tmp_path, 1, 1).close()
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1]


def test_torn_last_line_is_skipped(tmp_path):
    _log_iterations(tmp_path, 1, 2).close()
    with (tmp_path / runlog.METRICS_FILE).open("a") as f:
        f.write('{"iteration": 3, "reward/me')  # killed mid-write
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2]
    _log_iterations(tmp_path, 3, 3, start_iteration=2).close()
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_summary_is_replaced_atomically(tmp_path, monkeypatch):
    log = RunLog(tmp_path, total_iterations=1, progress=False)
    log.write_summary({"accuracy_before": 0.1, "loss": torch.tensor(2.0)})
    assert json.loads((tmp_path / runlog.SUMMARY_FILE).read_text()) == {"accuracy_before": 0.1, "loss": 2.0}

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        log.write_summary({"accuracy_before": 0.9})
    monkeypatch.undo()
    # The failed write left the previous summary whole.
    assert json.loads((tmp_path / runlog.SUMMARY_FILE).read_text())["accuracy_before"] == 0.1
    log.close()


def test_close_draws_the_reward_curve(tmp_path):
    log = _log_iterations(tmp_path, 1, 4)
    log.close()
    log.close()  # idempotent
    assert (tmp_path / runlog.REWARD_CURVE_FILE).read_bytes().startswith(PNG_MAGIC)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_progress_bar_and_missing_tensorboard_note(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runlog, "_told_no_tensorboard", False)
    for name in ("a", "b"):
        with RunLog(tmp_path / name, total_iterations=4, start_iteration=1, progress=True) as log:
            log.log(2, {M.REWARD_MEAN: 0.5, M.ACCURACY: 0.25})
    err = capsys.readouterr().err
    assert "reward=0.500" in err and "acc=0.250" in err
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert err.count("tensorboard is not installed") == 1  # said once per process


def test_timeline_png(tmp_path):
    spans = [("trainer", "train", 0.0, 1.0), ("rollout-0", "rollout", 0.0, 0.7), ("trainer", "sync", 1.0, 1.2)]
    path = plot_timeline(spans + [M.Span("rollout-0", "score", 0.7, 0.9)], tmp_path / "timeline.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
