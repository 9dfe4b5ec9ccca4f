"""One rollout worker process, seen from the trainer: spawn, pipes, replies, liveness, stop.

    trainer process                              rollout worker (engine/rollout/fleet/worker.py)
    WorkerProcess(spec, receiver)  -- spawn -->  build its engine, Ready(pid)
    send(message)                  -------->     requests pipe
    inbox / on_message             <--------     replies pipe, drained by a reader thread

The reader thread hands each reply to `on_message` (the fleet deals more prompts from there, so a worker is
never starved while the trainer trains) and queues what it does not take in `inbox` for the synchronous waits
(start-up, weight-sync acks). Every wait polls in short slices and checks the process is alive, so a dead
worker (EOF on its pipe) is reported within a slice as `RolloutWorkerDied` naming the exit code. The worker's
heartbeat, Alive(decode steps), tells a slow worker from a stalled one (`progress_at`). `stop()` (also run by a
finalizer) sends Shutdown, then SIGTERM, then SIGKILL, and reaps the process.
"""
from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable

import torch.multiprocessing as tmp

from engine.rollout.fleet.messages import Alive, Failed, LoadWeights, Shutdown, WeightsLoaded
from engine.rollout.fleet.transports import WeightReceiver
from engine.rollout.fleet.worker import WorkerSpec, worker_main

POLL_S = 0.2  # how often a wait checks that the worker is alive
STARTUP_TIMEOUT_S = 600.0  # spawning imports torch and transformers and loads the model: slow on a busy host
STOP_GRACE_S = 5.0  # how long Shutdown gets before SIGTERM, and SIGTERM before SIGKILL


class RolloutWorkerError(RuntimeError):
    """The rollout worker failed or broke the protocol."""


class RolloutWorkerDied(RolloutWorkerError):
    """The rollout worker process is gone."""

    def __init__(self, message: str, exitcode: int | None):
        super().__init__(message)
        self.exitcode = exitcode


class WeightSyncTimeout(RolloutWorkerError):
    """The worker did not acknowledge a weight sync within pipeline.sync_timeout_s."""


class WeightVersionError(RolloutWorkerError):
    """Trainer and worker disagree about which policy version the worker holds."""


class Closed:
    """Handed over by the reader thread when the worker's pipe reaches EOF (the process exited)."""


class WorkerProcess:
    """One spawned rollout process and its two one-way pipes; replies are drained into `inbox` by a thread, so
    the worker never blocks on a full pipe while the trainer is busy."""

    def __init__(self, spec: WorkerSpec, receiver: WeightReceiver,
                 on_message: Callable[[object], bool] = lambda message: False) -> None:
        """`on_message(reply)` runs in the reader thread for every reply (and a final `Closed`); it returns
        True when it took the reply, which then does not go to `inbox`."""
        ctx = tmp.get_context("spawn")
        requests_out, requests_in = ctx.Pipe(duplex=False)[::-1]  # (send end, receive end)
        replies_in, replies_out = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=worker_main, args=(spec, receiver, requests_in, replies_out),
                                   name="cadence-rollout", daemon=True)
        self.process.start()
        # Only the worker keeps its ends: when it exits, our receive end sees EOF at once.
        requests_in.close()
        replies_out.close()
        self._requests = requests_out
        self._replies = replies_in
        self.inbox: queue.Queue = queue.Queue()
        self.on_message = on_message
        self.ready = False
        self._steps = -1  # the last Alive's decode steps
        self.progress_at = time.monotonic()  # when the worker last advanced (or was given work)
        self._send_lock = threading.Lock()  # the controller and the reader thread both send
        self._reader = threading.Thread(target=self._drain, name="cadence-rollout-replies", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, message: object, doing: str) -> None:
        try:
            with self._send_lock:
                self._requests.send(message)
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise self.died(doing) from None

    def receive(self, doing: str, deadline: float | None = None) -> object:
        """The next reply; RolloutWorkerDied if the process is gone, TimeoutError past `deadline`."""
        while True:
            wait = POLL_S if deadline is None else min(POLL_S, deadline - time.perf_counter())
            if wait <= 0:
                raise TimeoutError(doing)
            try:
                message = self.inbox.get(timeout=wait)
            except queue.Empty:
                if not self.process.is_alive():
                    raise self.died(doing) from None
                continue
            if isinstance(message, Closed):
                raise self.died(doing)
            if isinstance(message, Failed):
                raise RolloutWorkerError(f"the rollout worker (pid {self.pid}) failed in {message.where} while "
                                         f"{doing}:\n{message.traceback}")
            return message

    def await_ready(self, who: str) -> None:
        """Wait for the worker's Ready (its model loaded), at most STARTUP_TIMEOUT_S."""
        if self.ready:
            return
        try:
            self.receive("starting up (loading the model)", time.perf_counter() + STARTUP_TIMEOUT_S)
        except TimeoutError:
            raise RolloutWorkerError(f"{who} (pid {self.pid}) did not start within {STARTUP_TIMEOUT_S:g}s") from None
        self.ready = True

    def load_weights(self, version: int, timeout_s: float, who: str) -> WeightsLoaded:
        """Tell the worker the transport holds `version` and return its acknowledgement: TimeoutError past
        `timeout_s`, RolloutWorkerDied if it dies, WeightVersionError if it acknowledges anything else."""
        doing = f"loading weights version {version}"
        self.send(LoadWeights(version), doing)
        reply = self.receive(doing, time.perf_counter() + timeout_s)
        if not isinstance(reply, WeightsLoaded) or reply.version != version:
            raise WeightVersionError(f"weight sync: sent version {version}, {who} answered {reply}")
        return reply

    def stalled_for(self) -> float:
        """Seconds since the worker's decode steps last advanced (or it was last given work)."""
        return time.monotonic() - self.progress_at

    def kill(self) -> None:
        """SIGKILL (a stalled worker): its pipe then reaches EOF and the reader reports it `Closed`."""
        if self.process.is_alive():
            self.process.kill()

    def died(self, doing: str) -> RolloutWorkerDied:
        self.process.join(timeout=2.0)  # reap it, so the exit code is known and no zombie is left
        code = self.process.exitcode
        return RolloutWorkerDied(f"the rollout worker (pid {self.pid}) died with {_describe_exit(code)} while "
                                 f"{doing}", code)

    def stop(self) -> None:
        """Shutdown, then SIGTERM, then SIGKILL; always reaps the process. Idempotent."""
        if self.process.is_alive():
            try:
                self._requests.send(Shutdown())
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass
            self.process.join(STOP_GRACE_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(STOP_GRACE_S)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self._requests.close()
        self._reader.join(timeout=STOP_GRACE_S)  # it ends at EOF, which the exit caused
        self._replies.close()

    def _drain(self) -> None:
        while True:
            try:
                message = self._replies.recv()
            except (EOFError, OSError):
                message = Closed()
            if isinstance(message, Alive):
                if message.steps != self._steps:
                    self._steps, self.progress_at = message.steps, time.monotonic()
                continue
            self.progress_at = time.monotonic()
            if not self.on_message(message):
                self.inbox.put(message)
            if isinstance(message, Closed):
                return


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code yet"
    if code < 0:
        try:
            return f"exit code {code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f"exit code {code} (killed by signal {-code})"
    return f"exit code {code}"
