"""reward.timeout_s > 0: reward functions run in a persistent worker process; a call that does not return in time
is scored as failed (0, no answer), counted, and the worker is killed and restarted."""
import sys
import textwrap
import time

import pytest

from engine.config import RewardConfig
from engine.rewards import RewardResult
from engine.rewards.composite import build_rewards
from engine.rewards.worker import TIMED_OUT, RewardWorker
from test_composite import text_group, text_trimodel

TIMEOUT_S = 1.0  # generous next to a trivial call (~0.1 ms) on a busy 2-core host; each hang costs this much
SLACK_S = 3.0  # kill + join of the stuck worker, on a busy host


@pytest.fixture
def slow_module(tmp_path, monkeypatch):
    (tmp_path / "slow_rewards.py").write_text(textwrap.dedent("""
        import time

        def maybe_hang(completion, reference, prompt):
            if completion == "hang":
                time.sleep(1e6)  # "forever"
            return 1.0 if completion == reference else 0.5

        def boom(completion, reference):
            raise KeyError("oops")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))  # spawn passes sys.path on to the worker
    yield "slow_rewards"
    sys.modules.pop("slow_rewards", None)


def test_a_hanging_call_is_stopped_scored_failed_and_counted(slow_module):
    worker = RewardWorker([f"{slow_module}:maybe_hang"], TIMEOUT_S)
    try:
        assert worker.run([(0, "42", "42", "")]) == ([RewardResult(1.0, True)], 0)
        first_pid = worker.pid
        start = time.perf_counter()
        results, timeouts = worker.run([(0, "hang", "42", "")])
        elapsed = time.perf_counter() - start
        assert results == [TIMED_OUT] and timeouts == 1
        assert TIMEOUT_S <= elapsed < TIMEOUT_S + SLACK_S
        assert worker.pid is None  # killed; the next call starts a fresh one
        # Mid-batch: the calls after the hanging one go to a restarted worker; the next call works.
        results, timeouts = worker.run([(0, "42", "42", ""), (0, "hang", "42", ""), (0, "41", "42", "")])
        assert [r.score for r in results] == [1.0, 0.0, 0.5] and timeouts == 1
        assert [r.extracted for r in results] == [True, False, True]
        assert worker.pid not in (None, first_pid)
        assert worker.run([(0, "42", "42", "")]) == ([RewardResult(1.0, True)], 0)
    finally:
        worker.stop()


def test_trimodel_counts_timeouts_per_group(slow_module):
    cfg = RewardConfig(functions=[f"{slow_module}:maybe_hang", "engine.rewards.format:gsm8k_format_reward"],
                       weights=[1.0, 1.0], timeout_s=TIMEOUT_S)
    trimodel = text_trimodel(cfg)
    try:
        group = text_group(["hang", "#### 42"], reference="#### 42")
        trimodel.score(group)
        assert group.reward_timeouts == 1
        assert group.scores_G.tolist() == [0.0, 1.0] and group.extracted == [False, True]
        assert group.rewards_G.tolist() == [0.0, 2.0]
        group = text_group(["#### 42", "x"], reference="#### 42")
        trimodel.score(group)
        assert group.reward_timeouts == 0 and group.rewards_G.tolist() == [2.0, 0.5]
    finally:
        trimodel.rewards.functions.worker.stop()


def test_an_error_in_the_worker_is_an_error_naming_the_function(slow_module):
    functions = build_rewards(RewardConfig(functions=[f"{slow_module}:boom"], timeout_s=TIMEOUT_S)).functions
    try:
        with pytest.raises(RuntimeError, match=f"reward function '{slow_module}:boom' raised KeyError"):
            functions.run([(0, "x", "y", "")])
        assert functions.worker.pid is None  # a worker that reported an error is not reused
    finally:
        functions.worker.stop()
