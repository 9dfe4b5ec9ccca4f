"""An error on any rank of a multi-rank run ends every rank within seconds, naming the error; never a hang.

The ranks are started as plain processes (RANK, WORLD_SIZE, MASTER_ADDR/PORT, as SLURM or any launcher sets
them), not under torchrun, whose agent would kill the survivors itself: what is tested is that the ranks stop
each other (engine/parallel/control.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_spmd import ROOT, _free_port, _overrides

pytestmark = pytest.mark.slow
DEADLINE_S = 60.0  # from the first process's exit to the last one's


def _launch_ranks(overrides: list[str], fail_rank: int, logs: Path, world_size: int = 2) -> list[subprocess.Popen]:
    port = _free_port()
    script = Path(__file__).with_name("raising_rank.py")
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
               "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "CADENCE_TEST_FAIL_RANK": str(fail_rank), "CADENCE_TEST_FAIL_AT": "2"}
        out = open(logs / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, str(script), *overrides], cwd=ROOT, env=env, stdout=out,
                                      stderr=subprocess.STDOUT))
    return procs


def _wait_all(procs: list[subprocess.Popen], limit_s: float = 600) -> list[float]:
    """Each process's exit time (monotonic seconds); kills them all and fails if any outlives `limit_s`."""
    start, ended = time.monotonic(), {}
    while len(ended) < len(procs):
        for i, proc in enumerate(procs):
            if i not in ended and proc.poll() is not None:
                ended[i] = time.monotonic()
        if time.monotonic() - start > limit_s:
            for proc in procs:
                proc.kill()
            pytest.fail(f"ranks still running after {limit_s} s")
        time.sleep(0.1)
    return [ended[i] for i in range(len(procs))]


@pytest.mark.parametrize("fail_rank", [0, 1])
def test_an_error_on_one_rank_ends_every_rank_within_seconds(tiny_model_dir, tmp_path, fail_rank):
    overrides = _overrides(tiny_model_dir, tmp_path / "out", **{"model.dtype": "float32", "optim.micro_batch_size": 4,
                                                                 "rollout.prompts_per_iteration": 8})
    procs = _launch_ranks(overrides, fail_rank, tmp_path)
    ended = _wait_all(procs)
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in range(len(procs))]
    assert all(proc.returncode != 0 for proc in procs), [proc.returncode for proc in procs]
    assert max(ended) - min(ended) < DEADLINE_S
    error = f"injected fault on rank {fail_rank}"
    assert error in logs[fail_rank]  # the failing rank prints its traceback
    for rank, log in enumerate(logs):
        if rank != fail_rank:  # the others name the failed rank and its error
            assert f"because rank {fail_rank} failed: RuntimeError: {error}" in log, log[-3000:]
