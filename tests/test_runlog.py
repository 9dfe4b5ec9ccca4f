"""The run folder's logs: metrics.jsonl, resume truncation, summary.json, the PNG plots."""
from __future__ import annotations

import importlib.util
import json
import logging
import os

import pytest
import torch

from engine import metrics as M
from engine import plots, runlog, tracking
from engine.config import ConfigError, RunConfig
from engine.plots import plot_timeline
from engine.runlog import RunLog, read_metrics
from engine.types import PromptItem, RolloutGroup

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
    monkeypatch.setattr(tracking, "_told_no_tensorboard", False)
    real = tracking.missing_packages
    monkeypatch.setattr(tracking, "missing_packages",
                        lambda name, uri="": "pip install tensorboard" if name == "tensorboard" else real(name, uri))
    for name in ("a", "b"):
        with RunLog(tmp_path / name, total_iterations=4, start_iteration=1, progress=True) as log:
            log.log(2, {M.REWARD_MEAN: 0.5, M.ACCURACY: 0.25})
    err = capsys.readouterr().err
    assert "reward=0.500" in err and "acc=0.250" in err
    assert err.count("tensorboard is not installed") == 1  # said once per process
    assert not (tmp_path / "a" / "tensorboard").exists()


def test_each_iteration_is_one_console_line_through_the_cadence_logger(tmp_path):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("cadence").addHandler(handler)
    try:
        with RunLog(tmp_path, total_iterations=4, progress=False, trackers=[]) as log:
            log.log(1, {M.REWARD_MEAN: 0.5, M.LOSS: 0.125})
            log.log(2, {M.REWARD_MEAN: 0.75})
    finally:
        logging.getLogger("cadence").removeHandler(handler)
    lines = [r.getMessage() for r in records if r.getMessage().startswith("iteration ")]
    assert lines == [f"iteration 1/4: {M.REWARD_MEAN}=0.5 {M.LOSS}=0.125", f"iteration 2/4: {M.REWARD_MEAN}=0.75"]


class RecordingTracker:
    def __init__(self):
        self.metrics, self.summaries, self.closed = [], [], []

    def log_metrics(self, iteration, metrics):
        self.metrics.append((iteration, metrics))

    def log_summary(self, summary):
        self.summaries.append(summary)

    def close(self, finished):
        self.closed.append(finished)


def test_trackers_get_every_record_the_summary_and_how_the_run_ended(tmp_path):
    done, failed = RecordingTracker(), RecordingTracker()
    with RunLog(tmp_path / "a", total_iterations=2, progress=False, trackers=[done]) as log:
        log.log(1, {M.REWARD_MEAN: 0.5, M.LOSS: float("nan")})
        log.write_summary({"accuracy_after": 0.25})
    with RunLog(tmp_path / "b", total_iterations=2, progress=False, trackers=[failed]) as log:
        log.log(1, {M.REWARD_MEAN: 0.5})
    assert done.metrics == [(1, {M.REWARD_MEAN: 0.5, M.LOSS: None})]  # what metrics.jsonl holds
    assert done.summaries == [{"accuracy_after": 0.25}] and done.closed == [True]
    assert failed.closed == [False]  # no summary: the run did not finish


def test_an_explicitly_requested_logger_that_is_not_installed_is_a_one_line_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^run.loggers: wandb is not installed; pip install wandb") as info:
        tracking.check_installed(RunConfig(loggers=["tensorboard", "wandb"]))
    assert "\n" not in str(info.value)
    tracking.check_installed(RunConfig())  # the default asks for nothing in particular


def test_samples_jsonl_holds_the_first_groups_of_each_iteration_and_is_cut_on_resume(tmp_path):
    def group(index):
        g = RolloutGroup(PromptItem(index, [1], "7", text=f"Question {index}"), [], version=0, texts=["a", "b"])
        g.rewards_G, g.advantages_G = torch.tensor([1.0, 0.0]), torch.tensor([1.0, -1.0])
        return g

    with RunLog(tmp_path, total_iterations=3, progress=False, trackers=[], samples_per_iteration=2) as log:
        for k in (1, 2, 3):
            log.log_samples(k, [group(0), group(1), group(2)])
    lines = [json.loads(line) for line in (tmp_path / runlog.SAMPLES_FILE).read_text().splitlines()]
    assert [(l["iteration"], l["prompt"]) for l in lines] == [(k, f"Question {i}") for k in (1, 2, 3) for i in (0, 1)]
    assert lines[0] == {"iteration": 1, "prompt": "Question 0", "reference": "7", "completions": ["a", "b"],
                        "rewards": [1.0, 0.0], "advantages": [1.0, -1.0]}
    RunLog(tmp_path, total_iterations=3, start_iteration=2, progress=False, trackers=[],
           samples_per_iteration=2).close()  # resumed from the checkpoint of iteration 2
    kept = (tmp_path / runlog.SAMPLES_FILE).read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in kept] == [1, 1, 2, 2]


def test_timeline_png(tmp_path):
    spans = [("trainer", "train", 0.0, 1.0), ("rollout-0", "rollout", 0.0, 0.7), ("trainer", "sync", 1.0, 1.2)]
    path = plot_timeline(spans + [M.Span("rollout-0", "score", 0.7, 0.9)], tmp_path / "timeline.png")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_the_reward_curve_draws_eval_accuracy_as_points_at_its_iterations(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    records = [{"iteration": 0, M.EVAL_ACCURACY: 0.25}, {"iteration": 1, M.REWARD_MEAN: 0.5},
               {"iteration": 2, M.REWARD_MEAN: 0.6, M.EVAL_ACCURACY: 0.5}]
    plots.plot_reward_curve(records, tmp_path / "curve.png")
    lines = {line.get_label(): line for line in figures[0].axes[0].lines}
    assert list(lines[M.EVAL_ACCURACY].get_xdata()) == [0, 2]
    assert list(lines[M.EVAL_ACCURACY].get_ydata()) == [0.25, 0.5]
    assert lines[M.EVAL_ACCURACY].get_linestyle() == "None" and lines[M.REWARD_MEAN].get_linestyle() == "-"
