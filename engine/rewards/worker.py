"""Reward functions in a worker process (`reward.timeout_s > 0`), so a call that hangs costs seconds, not the run.

One persistent spawned process loads the functions by their import paths (spawn, not fork: the trainer holds
threads and device contexts that a forked child must not inherit) and serves batches of calls, answering each
call as soon as it is done:

    trainer                                        worker ("cadence-reward")
      send [call_0 .. call_n]            ──►       for each call: score it, send the result
      wait <= timeout_s for each result  ◄──       ("ok", score, extracted) | ("error", message)

A result that does not arrive within `timeout_s` of the previous one (or of the send) is a timeout: that call
scores `TIMED_OUT` (0, no answer), the worker is killed and a fresh one is started for the calls left. A call
during which the worker process dies (the function called os._exit, segfaulted, was OOM-killed) is a crash:
it scores `CRASHED` (also 0, no answer), is counted apart and warned about, and the calls left go to a fresh
worker. The start-up (spawning, importing the functions) is waited for separately, up to STARTUP_TIMEOUT_S,
and never counts against a call; dying there is an error. A function that raises is an error, as in-process:
the worker reports it, drops the rest of the batch, and the caller raises.

The worker leads its own process group, and killing it kills the group with SIGKILL (a function stuck in C
code ignores anything gentler), so processes a function started itself (a sandbox, a `sleep`) die with it.

No torch here: the worker imports only this package and the configured functions' modules.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from engine.rewards.registry import RewardResult, load_reward_fn

STARTUP_TIMEOUT_S = 300.0  # spawning re-imports the launching module (torch, transformers): slow on a busy host
TIMED_OUT = RewardResult(score=0.0, extracted=False)
CRASHED = RewardResult(score=0.0, extracted=False)

Call = tuple[int, str, str, str]  # (function index, completion, reference, prompt)


@dataclass(slots=True)
class CallResults:
    """The results of a batch of calls, in order, and how many of them were lost (each scored 0, no answer)."""

    results: list[RewardResult] = field(default_factory=list)
    timeouts: int = 0  # calls that ran past the timeout (TIMED_OUT)
    crashes: int = 0  # calls during which the worker process died (CRASHED)


class RewardWorker:
    """Runs `Call`s of the functions `paths` in one persistent worker process with a per-call timeout."""

    def __init__(self, paths: Sequence[str], timeout_s: float):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.paths = tuple(paths)
        self.timeout_s = timeout_s
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def run(self, calls: Sequence[Call]) -> CallResults:
        """The result of every call in order (TIMED_OUT / CRASHED for the lost ones) and how many were lost."""
        out = CallResults()
        while len(out.results) < len(calls):
            pending = calls[len(out.results):]
            conn = self._connection()
            try:
                conn.send(list(pending))
                for index, *_ in pending:  # a lost call ends the loop: the calls after it go to a fresh worker
                    if not conn.poll(self.timeout_s):
                        self.stop()
                        out.results.append(TIMED_OUT)
                        out.timeouts += 1
                        break
                    try:
                        out.results.append(self._result(conn))
                    except EOFError:  # the worker died during this call
                        self._crashed(self.paths[index])
                        out.results.append(CRASHED)
                        out.crashes += 1
                        break
            except BaseException:
                self.stop()  # an error, or an interrupt mid-batch: never reuse a worker with answers in flight
                raise
        return out

    def stop(self) -> int | None:
        """Kill the worker and its process group (if any) and return its exit code; the next `run` starts a
        fresh one. Idempotent."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is None:
            return None
        try:
            os.killpg(process.pid, signal.SIGKILL)  # before the join: the pid cannot be reused until reaped
        except ProcessLookupError:  # killed before its os.setsid(): no group yet, nothing of its own spawned
            pass
        process.kill()
        process.join()
        conn.close()
        return process.exitcode

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
            try:
                self._result(ours)  # ("ready",) or the load error
            except EOFError:
                raise RuntimeError(f"reward worker exited (code {self.stop()}) while starting") from None
        return self._conn

    def _result(self, conn: Connection) -> RewardResult | None:
        """The next answer: a call's result, or None for ("ready",). EOFError: the worker died. A function's
        error stops the worker and raises."""
        message = conn.recv()
        if message[0] == "error":
            self.stop()
            raise RuntimeError(message[1])
        return RewardResult(score=message[1], extracted=message[2]) if message[0] == "ok" else None

    def _crashed(self, path: str) -> None:
        code = self.stop()
        # Not an error: a function that takes its process down with it (os._exit, a segfault in a C extension,
        # the OOM killer) costs one call, like a hang; said once per function and exit code, counted per call.
        warnings.warn(f"reward function '{path}' killed the reward worker (exit code {code}); the call scores 0 "
                      f"and a fresh worker takes the calls left", RuntimeWarning, stacklevel=3)


def serve(conn: Connection, paths: tuple[str, ...]) -> None:
    """Entry point of the worker process: load the functions, then answer batches of calls until EOF."""
    os.setsid()  # its own process group, so that `RewardWorker.stop` also kills what the functions spawn
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
