"""Reward functions in a worker process (`reward.timeout_s > 0`), so a call that hangs costs seconds, not the run.

One persistent spawned process loads the functions by their import paths (spawn, not fork: the trainer holds
threads and device contexts that a forked child must not inherit) and serves batches of calls, answering each
call as soon as it is done:

    trainer                                        worker ("cadence-reward")
      send [call_0 .. call_n]            ──►       for each call: score it, send the result
      wait <= timeout_s for each result  ◄──       ("ok", score, extracted) | ("error", message)

A result that does not arrive within `timeout_s` of the previous one (or of the send) is a timeout: that call
scores `TIMED_OUT` (0, no answer), the worker is killed (SIGKILL: a function stuck in C code ignores anything
gentler) and a fresh one is started for the calls left. The start-up (spawning, importing the functions) is
waited for separately, up to STARTUP_TIMEOUT_S, and never counts against a call. A function that raises is an
error, as in-process: the worker reports it, drops the rest of the batch, and the caller raises.

No torch here: the worker imports only this package and the configured functions' modules.
"""
from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from multiprocessing.connection import Connection

from engine.rewards.registry import RewardResult, load_reward_fn

STARTUP_TIMEOUT_S = 300.0  # spawning re-imports the launching module (torch, transformers): slow on a busy host
TIMED_OUT = RewardResult(score=0.0, extracted=False)

Call = tuple[int, str, str, str]  # (function index, completion, reference, prompt)


class RewardWorker:
    """Runs `Call`s of the functions `paths` in one persistent worker process with a per-call timeout."""

    def __init__(self, paths: Sequence[str], timeout_s: float):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.paths = tuple(paths)
        self.timeout_s = timeout_s
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def run(self, calls: Sequence[Call]) -> tuple[list[RewardResult], int]:
        """The result of every call in order (TIMED_OUT for those past the timeout) and how many timed out."""
        results: list[RewardResult] = []
        timeouts = 0
        while len(results) < len(calls):
            pending = calls[len(results):]
            conn = self._connection()
            try:
                conn.send(list(pending))
                for index, *_ in pending:
                    if not conn.poll(self.timeout_s):
                        self.stop()
                        results.append(TIMED_OUT)
                        timeouts += 1
                        break  # the calls after it go to a fresh worker
                    results.append(self._result(conn, f"scoring with '{self.paths[index]}'"))
            except BaseException:
                self.stop()  # an error, or an interrupt mid-batch: never reuse a worker with answers in flight
                raise
        return results, timeouts

    def stop(self) -> None:
        """Kill the worker (if any); the next `run` starts a fresh one."""
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._conn.close()
        self._process = self._conn = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _connection(self) -> Connection:
        if self._conn is None:
            ctx = multiprocessing.get_context("spawn")
            ours, theirs = ctx.Pipe()
            self._process = ctx.Process(target=serve, args=(theirs, self.paths), name="cadence-reward", daemon=True)
            self._process.start()
            theirs.close()  # only the worker holds its end: when it dies, ours sees EOF
            self._conn = ours
            if not ours.poll(STARTUP_TIMEOUT_S):
                self.stop()
                raise TimeoutError(f"reward worker did not start within {STARTUP_TIMEOUT_S:.0f} s")
            self._result(ours, "starting")  # ("ready",) or the load error
        return self._conn

    def _result(self, conn: Connection, doing: str) -> RewardResult | None:
        try:
            message = conn.recv()
        except EOFError:
            self._process.join()
            code = self._process.exitcode
            self.stop()
            raise RuntimeError(f"reward worker exited (code {code}) while {doing}") from None
        if message[0] == "error":
            self.stop()
            raise RuntimeError(message[1])
        return RewardResult(score=message[1], extracted=message[2]) if message[0] == "ok" else None


def serve(conn: Connection, paths: tuple[str, ...]) -> None:
    """Entry point of the worker process: load the functions, then answer batches of calls until EOF."""
    try:
        scorers = [load_reward_fn(path) for path in paths]
    except Exception as exc:  # a bad path was already reported by the trainer's own load; this is a late failure
        conn.send(("error", f"reward worker: {type(exc).__name__}: {exc}"))
        return
    conn.send(("ready",))
    while True:
        try:
            calls = conn.recv()
        except EOFError:  # the trainer closed its end or exited
            return
        for index, completion, reference, prompt in calls:
            try:
                result = scorers[index](completion, reference, prompt)
            except Exception as exc:  # the Scorer's message names the function
                conn.send(("error", str(exc)))
                break
            conn.send(("ok", result.score, result.extracted))
