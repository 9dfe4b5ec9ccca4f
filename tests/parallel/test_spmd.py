"""torchrun SPMD with FSDP2 on gloo: several trainer ranks train what one does; checkpoints reshard.

Each test launches `python -m torch.distributed.run` subprocesses on the miniature model, in float64 so the
parity claims are tested far from round-off: the only differences between rank counts are the order in
which micro-batch gradients are summed.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
RTOL = 1e-9  # float64: summation-order round-off (~1e-16) amplified by at most a few Adam steps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(model_dir, out: Path, **extra) -> list[str]:
    values = {"model.path": model_dir, "model.dtype": "float64", "run.output_dir": out, "run.name": "t",
              "run.iterations": 3, "run.checkpoint_every": 1, "run.progress": "false", "backend.name": "cpu",
              "data.train_size": 64, "rollout.prompts_per_iteration": 4, "rollout.group_size": 4,
              "rollout.max_new_tokens": 8, "eval.heldout_size": 8, "eval.max_new_tokens": 8, "optim.lr": 1e-2,
              "optim.micro_batch_size": 4, **extra}
    return [f"{k}={v}" for k, v in values.items()]


def launch(nproc: int, overrides: list[str], logs: Path, pythonpath: tuple[Path, ...] = ()) -> None:
    """torchrun; on failure the assertion shows each rank's own stderr (torchrun's summary hides the cause).
    `pythonpath`: more import roots (a test module's reward function)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={_free_port()}",
           f"--log-dir={logs}", "--redirects=3", "-m", "engine.train", *overrides]
    # tests/: helpers (ScriptedEnvironment)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(map(str, (ROOT, ROOT / "tests", *pythonpath)))}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    ranks = "".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(logs.rglob("stderr.log")))
    assert done.returncode == 0, ranks + done.stderr[-1500:]


def final_weights(out: Path, iteration: int = 3) -> dict[str, torch.Tensor]:
    return load_file(str(out / "t" / "checkpoints" / f"iter_{iteration:06d}" / "model.safetensors"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        scale = b[name].abs().max().clamp_min(1e-12)
        assert ((a[name] - b[name]).abs().max() / scale).item() < RTOL, name


PIPELINES = {"sync": {}, "periodic_async": {"pipeline.placement": "split", "pipeline.schedule": "periodic_async"}}
# 3 micro-batches of one group on 2 ranks: the second round is partial, so rank 1 takes a zero-weight backward
# (and the sharded reference's forward between it), which must add nothing
PARTIAL_ROUND = {"rollout.prompts_per_iteration": 3, "algorithm.kl_coef": 0.1}


@pytest.mark.parametrize("pipeline, rounds", [("sync", "whole"), ("periodic_async", "whole"), ("sync", "partial")])
def test_two_ranks_train_what_one_rank_trains(tiny_model_dir, tmp_path, pipeline, rounds):
    extra = {**PIPELINES[pipeline], **(PARTIAL_ROUND if rounds == "partial" else {})}
    for nproc in (1, 2):
        launch(nproc, _overrides(tiny_model_dir, tmp_path / str(nproc), **extra), tmp_path / f"logs{nproc}")
    assert_same(final_weights(tmp_path / "2"), final_weights(tmp_path / "1"))
    for nproc in (1, 2):
        run_dir = tmp_path / str(nproc) / "t"
        assert json.loads((run_dir / "summary.json").read_text())["world_size"] == nproc
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [line.get("dist/world_size") for line in lines if line["iteration"] > 0] == [nproc] * 3


def test_one_rank_under_torchrun_trains_what_a_plain_run_trains(tiny_model_dir, tmp_path):
    from engine.config import load_config
    from engine.train import run

    launch(1, _overrides(tiny_model_dir, tmp_path / "torchrun"), tmp_path / "logs")
    run(load_config(None, _overrides(tiny_model_dir, tmp_path / "plain")))
    assert_same(final_weights(tmp_path / "torchrun"), final_weights(tmp_path / "plain"))


@pytest.mark.parametrize("save_ranks, resume_ranks", [(2, 1), (1, 2)])
def test_a_checkpoint_saved_on_n_ranks_resumes_on_m(tiny_model_dir, tmp_path, save_ranks, resume_ranks):
    launch(save_ranks, _overrides(tiny_model_dir, tmp_path / "whole"), tmp_path / "logs_whole")
    launch(save_ranks, _overrides(tiny_model_dir, tmp_path / "cut", **{"run.iterations": 2}), tmp_path / "logs_cut")
    assert (tmp_path / "cut" / "t" / "checkpoints" / "iter_000002" / "dcp" / ".metadata").is_file()
    launch(resume_ranks, _overrides(tiny_model_dir, tmp_path / "cut", **{"run.resume": "true"}), tmp_path / "logs_res")
    assert_same(final_weights(tmp_path / "cut"), final_weights(tmp_path / "whole"))
    lines = (tmp_path / "cut" / "t" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [0, 1, 2, 3]  # nothing lost, nothing replayed


def test_a_plain_checkpoint_under_torchrun_fails_in_one_line(tiny_model_dir, tmp_path):
    from engine.config import load_config
    from engine.train import run

    run(load_config(None, _overrides(tiny_model_dir, tmp_path, **{"run.iterations": 1})))
    logs = tmp_path / "logs"
    with pytest.raises(AssertionError, match="written by a single-process run"):
        launch(1, _overrides(tiny_model_dir, tmp_path, **{"run.iterations": 2, "run.resume": "true"}), logs)


def test_every_colocated_rank_generates_and_two_ranks_train_what_one_trains(tiny_model_dir, tmp_path):
    # 6 prompts, 2 in flight per engine (8 rows / G=4): each rank's engine is dealt more as its groups finish
    extra = {"run.deterministic": "true", "rollout.prompts_per_iteration": 6, "rollout.max_batch_sequences": 8}
    for nproc in (1, 2):
        launch(nproc, _overrides(tiny_model_dir, tmp_path / str(nproc), **extra), tmp_path / f"logs{nproc}")
    assert_same(final_weights(tmp_path / "2"), final_weights(tmp_path / "1"))
    for nproc in (1, 2):
        lines = [json.loads(line) for line in (tmp_path / str(nproc) / "t" / "metrics.jsonl").read_text().splitlines()]
        trained = [line for line in lines if line["iteration"] > 0]
        assert [line["rollout/engines"] for line in trained] == [nproc] * 3
    busy = [[line.get(f"rollout/busy_s/rollout-{rank}", 0.0) for rank in (0, 1)] for line in trained]
    assert all(b0 > 0 and b1 > 0 for b0, b1 in busy), busy  # both ranks' engines generated every iteration
    rows = json.loads((tmp_path / "2" / "t" / "fleet.json").read_text())["engines"]
    assert [(r["id"], r["kind"], r["version"], r["alive"]) for r in rows] == [(0, "rank", 3, True), (1, "rank", 3, True)]
    assert rows[0]["pid"] != rows[1]["pid"]


def test_two_ranks_generating_multiturn_trajectories_train_what_one_trains(tiny_model_dir, tmp_path):
    # every rank's engine runs environments (tests/helpers.py ScriptedEnvironment): trajectories are seeded per
    # (prompt, sample), so dealing them over 2 engines gives 1 engine's groups, and the same update
    extra = {"run.deterministic": "true", "rollout.prompts_per_iteration": 6, "rollout.max_batch_sequences": 8,
             "env.name": "helpers:ScriptedEnvironment", "env.max_tokens": 24, "algorithm.truncated": "train"}
    for nproc in (1, 2):
        launch(nproc, _overrides(tiny_model_dir, tmp_path / str(nproc), **extra), tmp_path / f"logs{nproc}")
    assert_same(final_weights(tmp_path / "2"), final_weights(tmp_path / "1"))
    lines = [json.loads(line) for line in (tmp_path / "2" / "t" / "metrics.jsonl").read_text().splitlines()]
    trained = [line for line in lines if line["iteration"] > 0]
    assert all(line["rollout/engines"] == 2 and line["rollout/turns_per_sample"] >= 1.0 for line in trained)
    assert any(line["rollout/tool_calls_per_sample"] > 0 for line in trained)
