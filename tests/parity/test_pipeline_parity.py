"""periodic_async vs sync (arXiv 2511.18871 keeps GRPO on-policy): the same rollouts and, after three iterations,
the same parameters; the same bits with run.deterministic; colocated and split placement generate alike; a run
whose rollout worker died ends, resumed or with the worker restarted, equal to the uninterrupted run.

Every split run spawns a worker (seconds: it imports torch and transformers), so runs are shared through the
module fixture `runs` and each mode runs once.

Precision: the parameter-parity claims run in float64 (model.dtype=float64) within EXACT_RTOL; the bit-identity
claims (run.deterministic) run in float32. Rollout log-probs are float32 whatever model.dtype (the sampler's
log-softmax, engine/rollout/sampling.py), and two processes may differ in their last bits: they are compared
within `roundoff_bound(float32, hidden_size)` (a logit is a hidden-size dot product) times max(1, |logp|)."""
from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine import metrics as M
from engine.rollout.fleet.fleet import Fleet, NoRolloutEngineLeft
from engine.rollout.native import NativeRolloutEngine
from engine.train import run
from engine.trainer import Trainer
from helpers import EXACT_RTOL, max_rel_diff, roundoff_bound
from test_controller import small_config

pytestmark = pytest.mark.slow

SPLIT = {"pipeline.placement": "split"}
ASYNC = {"pipeline.placement": "split", "pipeline.schedule": "periodic_async"}
DET = {"run.deterministic": "true"}
F64 = {"model.dtype": "float64"}
MODES = {
    # float64, for the parity claims
    "colocated_f64": {"backend.threads": 1, **F64},  # the worker has 1 thread: the same kernels on both sides
    "periodic_async_f64": {**ASYNC, **F64},
    "split_sync_det_f64": {**SPLIT, **DET, **F64},
    # float32, for the bit-identity claims
    "split_sync_det": {**SPLIT, **DET},
    "periodic_async_det": {**ASYNC, **DET},  # also the uninterrupted run of the fault tests
    "colocated_det": {"backend.threads": 1, **DET},
}


@dataclass
class Outcome:
    rollouts: dict[tuple[int, int], list[tuple[list[int], list[float]]]]  # (version, prompt) -> completions
    order: list[tuple[int, int]]  # the order groups reached the trainer
    weights: dict[str, torch.Tensor]
    metrics: list[dict]
    run_dir: Path


def pipeline_config(model_dir, tmp_path, **extra):
    # Longer responses than the controller tests, so groups finish at different steps and arrive apart.
    return small_config(model_dir, tmp_path, **{"rollout.prompts_per_iteration": 6, "rollout.max_new_tokens": 24,
                                                "eval.before": "false", "eval.after": "false", **extra})


def run_recorded(model_dir, tmp_path, **extra) -> Outcome:
    rollouts, order = {}, []
    accumulate = Trainer.accumulate

    def recording(self, groups):
        for g in groups:
            rollouts[(g.version, g.prompt.index)] = [(c.token_ids, c.logprobs) for c in g.completions]
            order.append((g.version, g.prompt.index))
        return accumulate(self, groups)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "accumulate", recording)
        run(pipeline_config(model_dir, tmp_path, **extra))
    run_dir = tmp_path / "runs" / "t"
    weights = final_weights(run_dir)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return Outcome(rollouts, order, weights, metrics, run_dir)


@pytest.fixture(scope="module")
def logp_rtol(tiny_model_dir) -> float:
    hidden_size = json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"]
    return roundoff_bound(torch.float32, hidden_size)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    done: dict[str, Outcome] = {}

    def get(mode: str) -> Outcome:
        if mode not in done:
            done[mode] = run_recorded(tiny_model_dir, tmp_path_factory.mktemp(mode), **MODES[mode])
        return done[mode]

    return get


def assert_same_rollouts(a: Outcome, b: Outcome, logp_rtol: float) -> None:
    """The same tokens; log-probs within `logp_rtol` of max(1, |logp|) (see the module docstring)."""
    assert a.rollouts.keys() == b.rollouts.keys() and len(a.rollouts) == 3 * 6
    for key, completions in a.rollouts.items():
        for (tokens_a, logp_a), (tokens_b, logp_b) in zip(completions, b.rollouts[key]):
            assert tokens_a == tokens_b, key
            logp_a, logp_b = torch.tensor(logp_a, dtype=torch.float64), torch.tensor(logp_b, dtype=torch.float64)
            assert ((logp_a - logp_b).abs() <= logp_rtol * logp_b.abs().clamp_min(1.0)).all(), key


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / "iter_000003" / "model.safetensors"))


def assert_identical(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_periodic_async_produces_the_rollouts_and_parameters_of_sync(runs, logp_rtol):
    """Split sync here accumulates in prompt order (run.deterministic), periodic_async in arrival order: the
    rollouts are the same and the updates agree to float64 round-off."""
    sync, periodic = runs("split_sync_det_f64"), runs("periodic_async_f64")
    assert_same_rollouts(sync, periodic, logp_rtol)
    assert next(iter(sync.weights.values())).dtype == torch.float64
    assert max_rel_diff(periodic.weights, sync.weights) < EXACT_RTOL


def test_with_run_deterministic_the_two_schedules_give_identical_bits(runs, logp_rtol):
    sync, periodic = runs("split_sync_det"), runs("periodic_async_det")
    assert_same_rollouts(sync, periodic, logp_rtol)
    assert_identical(periodic.weights, sync.weights)
    assert sync.order == periodic.order == sorted(sync.order, key=lambda key: key[0])  # prompt order per version


def test_colocated_sync_equals_split_sync(runs, logp_rtol):
    colocated, split = runs("colocated_f64"), runs("split_sync_det_f64")
    assert_same_rollouts(colocated, split, logp_rtol)
    assert next(iter(colocated.weights.values())).dtype == torch.float64
    assert max_rel_diff(split.weights, colocated.weights) < EXACT_RTOL


def test_float32_colocated_and_split_generate_the_same_rollouts(runs, logp_rtol):
    """float32 documents (the runs of the bit-identity tests): a float32 model in two processes samples the
    same tokens; the log-probs may differ in their last bits."""
    assert_same_rollouts(runs("colocated_det"), runs("split_sync_det"), logp_rtol)


def test_deterministic_accumulation_does_not_depend_on_arrival_order(runs, tiny_model_dir, tmp_path):
    """An engine whose groups finish in another order (vLLM's is timing-dependent) changes nothing, bit for bit."""
    generate = NativeRolloutEngine.generate
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(NativeRolloutEngine, "generate", lambda self, p, s: iter(list(generate(self, p, s))[::-1]))
        shuffled = run_recorded(tiny_model_dir, tmp_path, **MODES["colocated_det"])
    assert_identical(shuffled.weights, runs("colocated_det").weights)


@pytest.mark.parametrize("mode", ["colocated_f64", "split_sync_det", "periodic_async_f64"])
def test_each_iteration_logs_the_pipeline_metrics_and_the_run_draws_its_timeline(runs, mode):
    outcome = runs(mode)
    for line in outcome.metrics:
        window = line[M.ITERATION_TIME]
        assert line[M.GEN_BUSY_S] > 0 and line[M.TRAIN_BUSY_S] > 0 and line[M.SYNC_S] > 0
        assert line[M.GEN_BUSY_S] + line[M.GEN_IDLE_S] == pytest.approx(window, rel=1e-3)
        assert line[M.TRAIN_BUSY_S] + line[M.TRAIN_IDLE_S] == pytest.approx(window, rel=1e-3)
        assert 0.0 <= line[M.OVERLAP_FRAC] <= 1.0
        if mode == "colocated_f64":  # one process generates, then trains: nothing can overlap
            assert line[M.OVERLAP_FRAC] == 0.0
        elif mode == "split_sync_det":  # only the scoring of arrived groups (trainer work) meets generation
            assert line[M.OVERLAP_FRAC] < 0.05
    assert (outcome.run_dir / "timeline.png").stat().st_size > 0
    lines = (outcome.run_dir / "timeline.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3]


# ------------------------------------------------------------------------------------------------ faults


@contextmanager
def worker_killed_in_iteration(k: int):
    """SIGKILL the first rollout worker right after iteration k's generate request: mid-iteration, every time."""
    generate = Fleet.generate
    kill: dict = {}

    def killing(self, prompts, params):
        stream = generate(self, prompts, params)
        if self.version == k and not kill:
            pid = self.pids[0]
            kill.update(pid=pid, at=time.perf_counter())
            os.kill(pid, signal.SIGKILL)
        return stream

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Fleet, "generate", killing)
        yield kill


def test_a_dead_worker_stops_the_run_with_its_exit_code_and_the_resumed_run_ends_equal(runs, tiny_model_dir,
                                                                                      tmp_path):
    overrides = MODES["periodic_async_det"]
    with worker_killed_in_iteration(1) as kill:
        with pytest.raises(NoRolloutEngineLeft, match=r"exit code -9 \(killed by SIGKILL\)"):
            run(pipeline_config(tiny_model_dir, tmp_path, **overrides))
    assert time.perf_counter() - kill["at"] < 10.0
    assert not Path(f"/proc/{kill['pid']}").exists()  # reaped, not a zombie
    run(pipeline_config(tiny_model_dir, tmp_path, **overrides, **{"run.resume": "true"}))
    assert_identical(final_weights(tmp_path / "runs" / "t"), runs("periodic_async_det").weights)


def test_with_restart_rollout_a_dead_worker_is_replaced_and_the_run_ends_equal(runs, tiny_model_dir, tmp_path):
    with worker_killed_in_iteration(1) as kill:
        run(pipeline_config(tiny_model_dir, tmp_path, **MODES["periodic_async_det"],
                            **{"pipeline.restart_rollout": "true"}))
    assert kill and not Path(f"/proc/{kill['pid']}").exists()
    assert_identical(final_weights(tmp_path / "runs" / "t"), runs("periodic_async_det").weights)
