"""reward.timeout_s > 0: reward functions run in a persistent worker process; a call that does not return in time,
or that kills the worker, is scored as failed (0, no answer), counted, and the worker is (killed with the
processes it started and) restarted; closing the trainer stops the worker."""
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.config import RewardConfig
from engine.rewards import RewardResult
from engine.rewards.composite import build_rewards
from engine.rewards.worker import CRASHED, TIMED_OUT, CallResults, RewardWorker
from helpers import make_trainer
from test_composite import text_group, text_trimodel

TIMEOUT_S = 1.0  # generous next to a trivial call (~0.1 ms) on a busy 2-core host; each hang costs this much
SLACK_S = 3.0  # kill + join of the stuck worker, on a busy host


@pytest.fixture
def slow_module(tmp_path, monkeypatch):
    (tmp_path / "slow_rewards.py").write_text(textwrap.dedent("""
        import os
        import signal
        import subprocess
        import time

        def maybe_hang(completion, reference, prompt):
            if completion == "hang":
                time.sleep(1e6)  # "forever"
            return 1.0 if completion == reference else 0.5

        def boom(completion, reference):
            raise KeyError("oops")

        def spawn_and_hang(completion, reference):  # `reference` names the file that gets the grandchild's pid
            child = subprocess.Popen(["sleep", "1000"])
            with open(reference, "w") as f:
                f.write(str(child.pid))
            time.sleep(1e6)

        def crash(completion, reference):
            if completion == "exit":
                os._exit(3)
            if completion == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            return 1.0 if completion == reference else 0.5
    """))
    monkeypatch.syspath_prepend(str(tmp_path))  # spawn passes sys.path on to the worker
    yield "slow_rewards"
    sys.modules.pop("slow_rewards", None)


def test_a_hanging_call_is_stopped_scored_failed_and_counted(slow_module):
    worker = RewardWorker([f"{slow_module}:maybe_hang"], TIMEOUT_S)
    try:
        assert worker.run([(0, "42", "42", "")]) == CallResults([RewardResult(1.0, True)])
        first_pid = worker.pid
        start = time.perf_counter()
        outcome = worker.run([(0, "hang", "42", "")])
        elapsed = time.perf_counter() - start
        assert outcome == CallResults([TIMED_OUT], timeouts=1)
        assert TIMEOUT_S <= elapsed < TIMEOUT_S + SLACK_S
        assert worker.pid is None  # killed; the next call starts a fresh one
        # Mid-batch: the calls after the hanging one go to a restarted worker; the next call works.
        outcome = worker.run([(0, "42", "42", ""), (0, "hang", "42", ""), (0, "41", "42", "")])
        assert outcome == CallResults([RewardResult(1.0, True), TIMED_OUT, RewardResult(0.5, True)], timeouts=1)
        assert worker.pid not in (None, first_pid)
        assert worker.run([(0, "42", "42", "")]) == CallResults([RewardResult(1.0, True)])
    finally:
        worker.stop()


def test_trimodel_counts_timeouts_and_crashes_per_group(slow_module):
    cfg = RewardConfig(functions=[f"{slow_module}:maybe_hang", f"{slow_module}:crash"],
                       weights=[1.0, 1.0], timeout_s=TIMEOUT_S)
    trimodel = text_trimodel(cfg)
    try:
        group = text_group(["hang", "#### 42", "exit"], reference="#### 42")
        with pytest.warns(RuntimeWarning, match="killed the reward worker"):
            trimodel.score(group)
        assert (group.reward_timeouts, group.reward_crashes) == (1, 1)
        assert group.scores_G.tolist() == [0.0, 1.0, 0.5] and group.extracted == [False, True, True]
        assert group.rewards_G.tolist() == [0.5, 2.0, 0.5]
        group = text_group(["#### 42", "x"], reference="#### 42")
        trimodel.score(group)
        assert (group.reward_timeouts, group.reward_crashes) == (0, 0) and group.rewards_G.tolist() == [2.0, 1.0]
    finally:
        trimodel.close()


def test_an_error_in_the_worker_is_an_error_naming_the_function(slow_module):
    functions = build_rewards(RewardConfig(functions=[f"{slow_module}:boom"], timeout_s=TIMEOUT_S)).functions
    try:
        with pytest.raises(RuntimeError, match=f"reward function '{slow_module}:boom' raised KeyError"):
            functions.run([(0, "x", "y", "")])
        assert functions.worker.pid is None  # a worker that reported an error is not reused
    finally:
        functions.close()


def exited(pid: int, within_s: float = SLACK_S) -> bool:
    """True once `pid` has exited within `within_s` (a zombie not yet reaped by its new parent counts as exited)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z" or time.monotonic() > deadline:
            return state == "Z"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
def test_a_timed_out_call_leaves_no_process_of_its_own_behind(slow_module, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    worker = RewardWorker([f"{slow_module}:spawn_and_hang"], TIMEOUT_S)
    try:
        outcome = worker.run([(0, "", str(pid_file), "")])
        grandchild = int(pid_file.read_text())
        assert exited(grandchild), "the reward function's own subprocess outlived the timeout"
        assert outcome.results == [TIMED_OUT] and outcome.timeouts == 1
    finally:
        worker.stop()
        if pid_file.exists() and not exited(int(pid_file.read_text()), within_s=0):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the test's own orphan, on failure


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_a_call_that_kills_the_worker_is_scored_failed_counted_and_the_run_goes_on(slow_module, how):
    worker = RewardWorker([f"{slow_module}:crash"], TIMEOUT_S)
    try:
        assert worker.run([(0, "42", "42", "")]).results == [RewardResult(1.0, True)]
        first_pid = worker.pid
        with pytest.warns(RuntimeWarning, match=f"reward function '{slow_module}:crash' killed the reward worker"):
            outcome = worker.run([(0, "42", "42", ""), (0, how, "42", ""), (0, "41", "42", "")])
        assert outcome.results == [RewardResult(1.0, True), CRASHED, RewardResult(0.5, True)]
        assert CRASHED == RewardResult(0.0, False)
        assert (outcome.crashes, outcome.timeouts) == (1, 0)
        assert worker.pid not in (None, first_pid)  # restarted for the calls after the crash
        assert worker.run([(0, "42", "42", "")]) == CallResults([RewardResult(1.0, True)])
    finally:
        worker.stop()


def test_closing_the_trainer_stops_the_reward_worker(slow_module, tiny_model_dir):
    trainer = make_trainer(tiny_model_dir, reward=RewardConfig(functions=[f"{slow_module}:maybe_hang"],
                                                               timeout_s=TIMEOUT_S))
    worker = trainer.trimodel.rewards.functions.worker
    try:
        assert trainer.trimodel.reward_fn("42", "42") == RewardResult(1.0, True)  # starts the worker
        pid = worker.pid
        assert pid is not None
        trainer.close()  # what the controller calls on every path out of a run
        assert worker.pid is None and exited(pid)
    finally:
        worker.stop()
