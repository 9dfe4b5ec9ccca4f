"""A RolloutEngine whose generator runs in its own process: the split placement of the pipeline.

    trainer process                                   rollout worker (engine/rollout/worker.py)
    load_weights(named, k):
        transport sender.send(named)  ~~~~~~~~~~~~~~>  (shared buffers / collective)
        LoadWeights(k)  ----------------------------->  copy into its model
        wait for WeightsLoaded(k) <= sync_timeout_s <-  ack k
    generate(prompts, params):
        Generate(id, k, prompts) ------------------->  refuse unless it holds k
        yield each GroupReady as it arrives  <--------  one message per finished group
        GenerateDone  <--------------------------------  its busy spans

Both sides check versions: the worker refuses a Generate for a version it does not hold, and the trainer
checks that the ack names the version it sent (and, in the trainer, that every group is of the current one).

Faults: replies are drained by a thread into a queue, and every wait polls that queue in short slices and
checks the process is alive, so a dead worker (EOF on its pipe, or `is_alive()` false) is reported within a
poll slice as `RolloutWorkerDied` naming the exit code. Every wait is bounded: start-up by STARTUP_TIMEOUT_S,
a weight sync by `sync_timeout_s`, and a generate by `stall_timeout_s` of no progress (the worker's heartbeat,
Alive(decode steps), stops arriving or stops advancing: `RolloutWorkerStalled`, handled as a death). With `restart_once`, a worker that dies is restarted
once per policy version: the new one loads the same weights and generates the prompts whose groups had not
arrived yet (per-prompt seeding makes them the groups the dead worker would have produced). `close()` (also
run by a finalizer) stops the process: Shutdown, then SIGTERM, then SIGKILL, and reaps it.
"""
from __future__ import annotations

import itertools
import queue
import signal
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing.connection import Connection

import torch
import torch.multiprocessing as tmp

from engine.rollout.weight_sync import WeightReceiver, WeightSender, WeightSyncTransport
from engine.metrics import Span
from engine.rollout.messages import (Alive, Failed, Generate, GenerateDone, GroupReady, LoadWeights, Ready,
                                      Refused, Shutdown, WeightsLoaded)
from engine.rollout.worker import WorkerSpec, worker_main
from engine.rollout.base import SamplingParams
from engine.rollout.sampling import check_sampling_params
from engine.types import PromptItem, RolloutGroup

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


class RolloutWorkerStalled(RolloutWorkerDied):
    """The worker's generation made no progress within stall_timeout_s (it is stopped, hung or deadlocked)."""


class WeightSyncTimeout(RolloutWorkerError):
    """The worker did not acknowledge a weight sync within pipeline.sync_timeout_s."""


class WeightVersionError(RolloutWorkerError):
    """Trainer and worker disagree about which policy version the worker holds."""


class _Closed:
    """Put in the inbox by the reader thread when the worker's pipe reaches EOF (the process exited)."""


class WorkerProcess:
    """One spawned rollout process and its two one-way pipes; replies are drained into `inbox` by a thread, so
    the worker never blocks on a full pipe while the trainer is busy."""

    def __init__(self, spec: WorkerSpec, receiver: WeightReceiver) -> None:
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
        self._reader = threading.Thread(target=self._drain, name="cadence-rollout-replies", daemon=True)
        self._reader.start()
        self.ready = False
        self._steps = -1  # the last Alive's decode steps
        self.progress_at = time.monotonic()  # when the worker last advanced (or was given work)

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, message: object, doing: str) -> None:
        try:
            self._requests.send(message)
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise self.died(doing) from None

    def receive(self, doing: str, deadline: float | None = None, stall_s: float | None = None) -> object:
        """The next reply; RolloutWorkerDied if the process is gone, TimeoutError past `deadline`,
        RolloutWorkerStalled when its decode steps have not advanced for `stall_s` seconds."""
        while True:
            wait = POLL_S if deadline is None else min(POLL_S, deadline - time.perf_counter())
            if wait <= 0:
                raise TimeoutError(doing)
            try:
                message = self.inbox.get(timeout=wait)
            except queue.Empty:
                if not self.process.is_alive():
                    raise self.died(doing) from None
                self._check_progress(doing, stall_s)
                continue
            if isinstance(message, _Closed):
                raise self.died(doing)
            if isinstance(message, Alive):
                if message.steps != self._steps:
                    self._steps, self.progress_at = message.steps, time.monotonic()
                self._check_progress(doing, stall_s)
                continue
            self.progress_at = time.monotonic()
            if isinstance(message, Failed):
                raise RolloutWorkerError(f"the rollout worker (pid {self.pid}) failed in {message.where} while "
                                         f"{doing}:\n{message.traceback}")
            return message

    def _check_progress(self, doing: str, stall_s: float | None) -> None:
        idle = time.monotonic() - self.progress_at
        if stall_s is not None and idle > stall_s:
            raise RolloutWorkerStalled(f"the rollout worker (pid {self.pid}) made no progress for {idle:.0f} s "
                                       f"(rollout.stall_timeout_s={stall_s:g}) while {doing}", None)

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
                self.inbox.put(_Closed())
                return
            self.inbox.put(message)


class RemoteRolloutEngine:
    """RolloutEngine (engine/rollout/base.py) backed by a rollout worker process; see the module docstring.

    `named_tensors` (the actor's parameters) fixes the names, shapes and dtypes the transport carries; the
    worker starts loading its model at construction, in parallel with whatever the trainer does next.
    """

    def __init__(self, spec: WorkerSpec, transport: WeightSyncTransport,
                 named_tensors: Iterable[tuple[str, torch.Tensor]], *, sync_timeout_s: float,
                 restart_once: bool = False, stall_timeout_s: float = 300.0) -> None:
        self.spec = spec
        self.sync_timeout_s = sync_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.restart_once = restart_once
        self.version = 0  # the worker starts from the model folder: the trainer's version 0
        self.restarts = 0  # over the engine's life, for logs and tests
        self._sender: WeightSender
        self._receiver: WeightReceiver
        self._sender, self._receiver = transport.connect(named_tensors, torch.device(spec.device))
        self._worker = WorkerProcess(spec, self._receiver)
        self._finalizer = weakref.finalize(self, WorkerProcess.stop, self._worker)
        self._restart_budget = int(restart_once)
        self._request_ids = itertools.count()
        self._spans: list[Span] = []
        self._broken: str | None = None  # set by a sync timeout: the worker's state is unknown from then on

    @property
    def pid(self) -> int:
        return self._worker.pid

    # ------------------------------------------------------------------ RolloutEngine
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Publish the weights through the transport and wait for the worker's ack of `version`."""
        self._check_usable()
        self._sender.send(named_tensors)  # packed into the transport's buffers, one tensor at a time
        if version != self.version:
            self._restart_budget = int(self.restart_once)  # one restart per policy version, i.e. per iteration
        while True:
            try:
                self._sync(version)
                return
            except RolloutWorkerDied as died:
                self._restart_or_raise(died)
                self._sender.resend()

    def generate(self, prompts: Sequence[PromptItem], params: SamplingParams) -> Iterator[RolloutGroup]:
        """Send the request now; the iterator yields each group as its message arrives (completion order)."""
        check_sampling_params(params)
        prompts = list(prompts)
        if any(not p.prompt_ids for p in prompts):
            raise ValueError("a prompt has no tokens: there is nothing to condition on")
        request_id = self._request(prompts, params)
        return self._stream(request_id, prompts, params)

    def pop_spans(self) -> list[Span]:
        """The worker's busy intervals since the last call (lane "rollout"), on this host's perf_counter clock."""
        out, self._spans = self._spans, []
        return out

    def close(self) -> None:
        """Stop and reap the worker process, release the transport. Idempotent."""
        self._finalizer()
        self._sender.close()

    # ------------------------------------------------------------------ protocol steps
    def _sync(self, version: int) -> None:
        """Tell the worker the transport holds `version` and wait for its ack."""
        self._check_usable()
        self._await_ready()
        deadline = time.perf_counter() + self.sync_timeout_s
        doing = f"loading weights version {version}"
        self._worker.send(LoadWeights(version), doing)
        try:
            reply = self._next_reply(doing, deadline, WeightsLoaded)
        except TimeoutError:
            self._broken = f"a sync of weights version {version} timed out"
            raise WeightSyncTimeout(f"the rollout worker (pid {self.pid}) did not acknowledge weights version "
                                    f"{version} within pipeline.sync_timeout_s={self.sync_timeout_s:g}s") from None
        if reply.version != version:
            raise WeightVersionError(f"weight sync: sent version {version}, the worker acknowledged {reply.version}")
        self._spans.extend(reply.spans)
        self.version = version

    def _request(self, prompts: list[PromptItem], params: SamplingParams) -> int:
        self._check_usable()
        self._await_ready()
        request_id = next(self._request_ids)
        self._worker.send(Generate(request_id, self.version, prompts, params), "receiving a generate request")
        self._worker.progress_at = time.monotonic()
        return request_id

    def _stream(self, request_id: int, prompts: list[PromptItem], params: SamplingParams) -> Iterator[RolloutGroup]:
        waiting = {p.index: p for p in prompts}
        doing = f"generating {len(prompts)} prompts at version {self.version}"
        while True:
            try:
                reply = self._next_reply(doing, None, GroupReady, GenerateDone, Refused, request_id=request_id,
                                         stall_s=self.stall_timeout_s)
            except RolloutWorkerDied as died:
                self._restart_or_raise(died)
                # the version the dead worker held, from the transport's buffers: the trainer's own tensors
                # may have stepped since (PPO mini-batches step while the rollout still streams)
                self._sender.resend()
                self._sync(self.version)
                request_id = self._request(list(waiting.values()), params)  # only what has not arrived
                continue
            if isinstance(reply, Refused):
                raise WeightVersionError(f"the rollout worker refused to generate: {reply.reason}")
            if isinstance(reply, GenerateDone):
                self._spans.extend(reply.spans)
                return
            if reply.group.version != self.version:
                raise WeightVersionError(f"the rollout worker sent a group of version {reply.group.version} for a "
                                         f"request at version {self.version}")
            waiting.pop(reply.group.prompt.index)
            yield reply.group

    def _next_reply(self, doing: str, deadline: float | None, *kinds: type, request_id: int | None = None,
                    stall_s: float | None = None):
        """The next reply of one of `kinds` (for `request_id`); replies to an abandoned request are dropped."""
        while True:
            reply = self._worker.receive(doing, deadline, stall_s)
            streamed = isinstance(reply, (GroupReady, GenerateDone, Refused))
            if isinstance(reply, kinds) and not (streamed and reply.request_id != request_id):
                return reply
            if streamed:
                continue  # the tail of a generate whose consumer stopped early
            raise RolloutWorkerError(f"unexpected {type(reply).__name__} from the rollout worker while {doing}")

    def _await_ready(self) -> None:
        if self._worker.ready:
            return
        deadline = time.perf_counter() + STARTUP_TIMEOUT_S
        try:
            self._next_reply("starting up (loading the model)", deadline, Ready)
        except TimeoutError:
            raise RolloutWorkerError(f"the rollout worker (pid {self.pid}) did not start within "
                                     f"{STARTUP_TIMEOUT_S:g}s") from None
        self._worker.ready = True

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise RolloutWorkerError(f"the rollout engine is unusable since {self._broken}; close it")

    def _restart_or_raise(self, died: RolloutWorkerDied) -> None:
        """Spawn a new worker in place of the dead one (the caller syncs it), or raise `died` when this
        version's restart is spent."""
        if self._restart_budget <= 0:
            raise died
        self._restart_budget -= 1
        self.restarts += 1
        self._finalizer()
        self._worker = WorkerProcess(self.spec, self._receiver)
        self._finalizer = weakref.finalize(self, WorkerProcess.stop, self._worker)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code yet"
    if code < 0:
        try:
            return f"exit code {code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f"exit code {code} (killed by signal {-code})"
    return f"exit code {code}"
