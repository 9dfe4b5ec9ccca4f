"""The rollout worker never outlives the run: stopped and reaped on every exit path, Ctrl-C included.
(A worker that dies mid-iteration, and the resume after it: tests/parity/test_pipeline_parity.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.controller import Controller
from engine.rollout.fleet.process import _describe_exit
from engine.train import run
from test_controller import small_config

pytestmark = pytest.mark.slow


def test_an_interrupted_run_stops_its_worker(tiny_model_dir, tmp_path):
    iteration, seen = Controller.iteration, {}

    def interrupted(self, k):
        if k == 1:
            seen["pid"] = self.parts.rollout.pids[0]
            raise KeyboardInterrupt("Ctrl-C")
        return iteration(self, k)

    overrides = {"pipeline.placement": "split", "pipeline.schedule": "periodic_async", "eval.before": "false"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Controller, "iteration", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run(small_config(tiny_model_dir, tmp_path, **overrides))
    assert not Path(f"/proc/{seen['pid']}").exists()


def test_exit_codes_are_described():
    assert _describe_exit(-9) == "exit code -9 (killed by SIGKILL)"
    assert _describe_exit(3) == "exit code 3"
    assert _describe_exit(None) == "no exit code yet"
