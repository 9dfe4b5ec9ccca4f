"""A fleet of rollout workers trains what one worker trains, and survives losing one mid-iteration.

Per-prompt seeds make a prompt's samples independent of which engine drew them and of what shared its batch;
with run.deterministic the trainer accumulates groups in prompt order, and in float64 a different batch
composition cannot flip a near-tie sample. So 2 engines and 1 engine end with the same parameters, bit for
bit, under both schedules, and so does a run in which one of the 2 workers is killed mid-iteration (its
prompts are dealt to the other with the same seeds and the same version).
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from engine import metrics as M
from engine.rollout.fleet.fleet import Fleet
from engine.train import run
from test_pipeline_parity import assert_identical, final_weights, pipeline_config

pytestmark = pytest.mark.slow
FLEET = {"pipeline.placement": "split", "run.deterministic": "true", "model.dtype": "float64",
         "rollout.max_batch_sequences": 8}  # 2 groups of 4 in flight per worker: dealing happens all along


def _run(model_dir, tmp_path: Path, workers: int, schedule: str) -> Path:
    run(pipeline_config(model_dir, tmp_path, **FLEET, **{"pipeline.rollout_workers": workers,
                                                         "pipeline.schedule": schedule}))
    return tmp_path / "runs" / "t"


@pytest.mark.parametrize("schedule", ["sync", "periodic_async"])
def test_two_engines_train_what_one_engine_trains(tiny_model_dir, tmp_path, schedule):
    one = _run(tiny_model_dir, tmp_path / "one", 1, schedule)
    two = _run(tiny_model_dir, tmp_path / "two", 2, schedule)
    assert_identical(final_weights(two), final_weights(one))
    lines = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [line[M.ROLLOUT_ENGINES] for line in lines] == [2.0] * 3
    fleet = json.loads((two / "fleet.json").read_text())["engines"]
    assert len(fleet) == 2 and all(e["alive"] and e["version"] == 2 and e["pid"] > 0 for e in fleet)  # the 3rd's


def test_a_worker_killed_mid_iteration_is_dropped_and_the_run_ends_as_if_it_had_lived(tiny_model_dir, tmp_path):
    """SIGKILL one of two workers right after the second iteration's request: its unfinished prompts are dealt to
    the other (redispatched_prompts > 0), every iteration completes on-policy (the trainer checks each group's
    version), and the parameters equal those of the run in which nothing died."""
    expected = final_weights(_run(tiny_model_dir, tmp_path / "whole", 2, "periodic_async"))
    generate, killed = Fleet.generate, {}

    def killing(self, prompts, params):
        stream = generate(self, prompts, params)
        if self.version == 1 and not killed:  # right after the request: its first prompts are dealt, not done
            killed["pid"] = self.pids[1]
            os.kill(killed["pid"], signal.SIGKILL)
        return stream

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Fleet, "generate", killing)
        run_dir = _run(tiny_model_dir, tmp_path / "cut", 2, "periodic_async")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line[M.ROLLOUT_ENGINES] for line in lines] == [2.0, 1.0, 1.0]
    assert lines[1][M.REDISPATCHED_PROMPTS] > 0 and lines[2][M.REDISPATCHED_PROMPTS] == 0
    assert_identical(final_weights(run_dir), expected)
    fleet = json.loads((run_dir / "fleet.json").read_text())["engines"]
    assert [e["alive"] for e in fleet] == [True, False] and fleet[1]["pid"] == killed["pid"]
