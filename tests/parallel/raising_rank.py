"""A rank of tests/parallel/test_fail_fast.py: `engine.train`, except that rank CADENCE_TEST_FAIL_RANK raises in
its CADENCE_TEST_FAIL_AT-th micro-batch, after the other ranks were sent theirs (so they are inside the
forward's collectives when it fails). A test harness, not engine code: it wraps one method of this process."""
from __future__ import annotations

import os

from engine.trainer import Trainer
from engine.train import exit_process, main

FAIL_RANK = int(os.environ["CADENCE_TEST_FAIL_RANK"])
FAIL_AT = int(os.environ["CADENCE_TEST_FAIL_AT"])


def _raising(original):
    calls = 0

    def accumulate(self, groups):
        nonlocal calls
        calls += 1
        if calls == FAIL_AT:
            raise RuntimeError(f"injected fault on rank {FAIL_RANK} in micro-batch {calls}")
        return original(self, groups)

    return accumulate


if __name__ == "__main__":
    if int(os.environ["RANK"]) == FAIL_RANK:
        Trainer.accumulate = _raising(Trainer.accumulate)
    exit_process(main())
