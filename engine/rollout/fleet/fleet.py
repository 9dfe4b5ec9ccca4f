"""The fleet: several rollout worker processes behind one RolloutEngine, the controller's view of them.

    controller              Fleet                                  worker 0 .. worker N-1 (fleet/worker.py)
    load_weights(k)  --->   transport.send once (shared buffers    LoadWeights(k) -> copy -> ack
                            or one collective per dtype); acks
    generate(P)      --->   Dealer(P): each worker gets prompts    Generate(first prompts) ...
                            up to its window; each finished        GroupReady -> (reader thread) Prompts(next)
    <--- one stream  <---   group is yielded as it arrives         EndPrompts when every group is in -> Done

Dealing happens in the workers' reader threads, so a worker gets its next prompt the moment a group of its
finishes, even while the trainer trains (periodic_async). Every group still carries the version every
worker acknowledged, and the trainer checks it.

Faults: a worker whose process exits, or whose decode steps stop advancing for `stall_timeout_s` (it is
then killed), is dropped: its unfinished prompts are dealt to the others (same per-prompt seeds, same
version) and `rollout/redispatched_prompts` counts them. When no worker is left the run stops with one line,
unless `restart` (pipeline.restart_rollout), which starts dead workers again (once per iteration), synced to
the current version from the transport's buffers. Between iterations dead workers rejoin that way too.
Every wait is bounded: start-up, acks (sync_timeout_s), generation (stall_timeout_s), the end of a request.
`fleet.json` lists the members (id, host, device, pid, engine, version, alive). Each member's own life (its
process, acknowledgement, loss) is engine/rollout/fleet/member.py; this module deals and streams.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import metrics as M
from engine.metrics import Span
from engine.rollout.base import SamplingParams
from engine.rollout.fleet.dealer import Dealer
from engine.rollout.fleet.member import Member, stop_all
from engine.rollout.fleet.messages import EndPrompts, Failed, GenerateDone, GroupReady, Refused
from engine.rollout.fleet.process import (POLL_S, Closed, RolloutWorkerDied, RolloutWorkerError, WeightSyncTimeout,
                                          WeightVersionError)
from engine.rollout.fleet.roster import write_fleet_file
from engine.rollout.fleet.transports import WeightSyncTransport
from engine.rollout.fleet.worker import WorkerSpec
from engine.rollout.sampling import check_sampling_params
from engine.timeline import engine_busy
from engine.types import PromptItem, RolloutGroup


class NoRolloutEngineLeft(RolloutWorkerError):
    """Every worker of the fleet is gone (and restarting was not allowed or did not help)."""


@dataclass(slots=True)
class _Call:
    """One generate() call: its prompts' dealer and the stream of what the workers send back."""

    id: int
    dealer: Dealer
    params: SamplingParams
    total: int  # prompts of the call
    out: queue.Queue = field(default_factory=queue.Queue)  # groups, and markers from the reader threads
    done: set[int] = field(default_factory=set)  # members that sent GenerateDone

    def await_done(self, members: Sequence[Member], timeout_s: float) -> None:
        """Wait (bounded) until every one of `members` still alive has sent GenerateDone; raise what a reader
        thread queued as an error meanwhile."""
        deadline = time.monotonic() + timeout_s
        while any(m.alive and m.id not in self.done for m in members):
            if time.monotonic() > deadline:
                raise RolloutWorkerError(f"rollout workers {[m.id for m in members if m.id not in self.done]} "
                                         f"did not end request {self.id} within {timeout_s:g}s")
            try:
                item = self.out.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if isinstance(item, Exception):
                raise item


def is_stale(member: Member, generation: int, message: object, call: _Call | None) -> bool:
    """A message the fleet drops: a replaced process's last words; a group or end sent before its member was
    dropped (its prompts were dealt again, their groups come from others); the tail of an abandoned request."""
    if generation != member.generation:
        return True
    if not member.alive and isinstance(message, (GroupReady, GenerateDone)):
        return True
    return isinstance(message, (GroupReady, GenerateDone, Refused)) and (call is None or message.request_id != call.id)


def worker_failure(member: int, message: Refused | Failed) -> RolloutWorkerError:
    """The error a worker's Refused (a version mismatch) or Failed (an exception there) message stands for."""
    if isinstance(message, Refused):
        return WeightVersionError(f"rollout worker {member} refused to generate: {message.reason}")
    return RolloutWorkerError(f"rollout worker {member} failed in {message.where}:\n{message.traceback}")


@dataclass(frozen=True, slots=True)
class _Lost:
    member: int


class Fleet:
    """RolloutEngine (engine/rollout/base.py) over `len(specs)` rollout worker processes; module docstring."""

    def __init__(self, specs: Sequence[WorkerSpec], transport: WeightSyncTransport,
                 named_tensors: Iterable[tuple[str, torch.Tensor]], *, window: int, sync_timeout_s: float,
                 stall_timeout_s: float, restart: bool = False, fleet_file: Path | None = None) -> None:
        self.sync_timeout_s, self.stall_timeout_s, self.restart = sync_timeout_s, stall_timeout_s, restart
        self.fleet_file = fleet_file
        self.version = 0  # the workers start from the model folder: the trainer's version 0
        self._sender, self._receivers = transport.connect(named_tensors, [torch.device(s.device) for s in specs])
        self.members = [Member(i, spec, window) for i, spec in enumerate(specs)]
        self._lock = threading.RLock()
        self._call: _Call | None = None
        self._call_ids = itertools.count()
        self._redispatched = 0
        for member in self.members:
            self._start(member)
        self._finalizer = weakref.finalize(self, stop_all, self.members)

    # ------------------------------------------------------------------ RolloutEngine
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Publish the weights once through the transport; every live worker acknowledges `version` (one that
        does not is dropped). Dead workers rejoin first when `restart` is on."""
        self._sender.send(named_tensors)
        if self.restart:
            for member in self.members:
                if not member.alive:
                    self._start(member)
        for member in self._live():
            self._sync(member, version)
        if not self._live():
            raise NoRolloutEngineLeft(f"no rollout worker acknowledged weights version {version}")
        self.version = version
        self._write_fleet_file()

    def generate(self, prompts: Sequence[PromptItem], params: SamplingParams) -> Iterator[RolloutGroup]:
        """Deal `prompts` to the workers now; the iterator yields each group as it arrives (completion order)."""
        check_sampling_params(params)
        prompts = list(prompts)
        if any(not p.prompt_ids for p in prompts):
            raise ValueError("a prompt has no tokens: there is nothing to condition on")
        call = _Call(next(self._call_ids), Dealer(prompts), params, len(prompts))
        with self._lock:
            self._call = call
            for member in self._live():
                self._open(member, call)
        return self._stream(call)

    def pop_spans(self) -> list[Span]:
        """Every worker's busy intervals since the last call, each in its own lane `rollout-<id>`."""
        out = []
        for member in self.members:
            out, member.spans = out + member.spans, []
        return out

    def metrics(self) -> dict[str, float]:
        """The fleet's figures for the iteration: live engines, prompts dealt again after a death, and each
        worker's generation busy seconds."""
        redispatched, self._redispatched = self._redispatched, 0
        return {M.ROLLOUT_ENGINES: float(len(self._live())), M.REDISPATCHED_PROMPTS: float(redispatched),
                **engine_busy(s for m in self.members for s in m.spans)}

    def close(self) -> None:
        """Stop and reap every worker, release the transport. Idempotent."""
        self._finalizer()
        self._sender.close()

    @property
    def pids(self) -> list[int | None]:
        return [m.process.pid if m.alive else None for m in self.members]

    # ------------------------------------------------------------------ workers
    def _start(self, member: Member) -> None:
        member.start(self._receivers[member.id], self._on_message)

    def _live(self) -> list[Member]:
        return [m for m in self.members if m.alive]

    def _sync(self, member: Member, version: int) -> None:
        """Tell `member` the transport holds `version`; wait for its ack (it is dropped if none comes)."""
        try:
            member.acknowledge(version, self.sync_timeout_s)
        except WeightSyncTimeout:
            self._drop(member, f"did not acknowledge weights version {version} within "
                               f"pipeline.sync_timeout_s={self.sync_timeout_s:g}s")
            raise
        except RolloutWorkerDied as died:
            self._drop(member, str(died))

    def _drop(self, member: Member, why: str) -> None:
        """`member` is out: its unfinished prompts go to the live workers with room."""
        with self._lock:
            if not member.alive:
                return
            member.lose(why)
            call = self._call
            if call is None:
                return
            self._redispatched += len(call.dealer.reclaim(member.id))
            for other in self._live():
                if other.in_request:
                    self._deal(other, call)
            call.out.put(_Lost(member.id))

    # ------------------------------------------------------------------ one generate call
    def _stream(self, call: _Call) -> Iterator[RolloutGroup]:
        if not self._live():
            self._restart_or_raise(call)
        try:
            for _ in range(call.total):  # every prompt's group, whichever worker made it
                group = None
                while group is None:
                    group = self._next_group(call)
                yield group
            self._end(call)
        finally:
            with self._lock:
                self._call = None

    def _open(self, member: Member, call: _Call) -> None:
        try:
            member.open_request(call.id, self.version, call.dealer.take(member.id, member.window), call.params)
        except RolloutWorkerDied as died:
            self._drop(member, str(died))

    def _deal(self, member: Member, call: _Call) -> None:
        member.send_prompts(call.id, call.dealer.take(member.id, member.window))

    def _next_group(self, call: _Call) -> RolloutGroup | None:
        """The next group from any worker, or None after a slice without one (stalls checked in between)."""
        try:
            item = call.out.get(timeout=POLL_S)
        except queue.Empty:
            self._kill_stalled()
            return None
        if isinstance(item, RolloutGroup):
            return item
        if isinstance(item, _Lost) and not self._live():
            self._restart_or_raise(call)
            return None
        if isinstance(item, Exception):
            raise item
        return None

    def _kill_stalled(self) -> None:
        for member in self._live():
            if member.in_request and member.process.stalled_for() > self.stall_timeout_s:
                self._drop(member, f"made no progress for {self.stall_timeout_s:g} s (rollout.stall_timeout_s)")

    def _restart_or_raise(self, call: _Call) -> None:
        dead = [m for m in self.members if not m.alive and m.restarted_at != self.version]
        if not self.restart or not dead:
            lost = "; ".join(m.lost for m in self.members)
            raise NoRolloutEngineLeft(f"every rollout worker is gone while generating at version {self.version} "
                                      f"({lost}); pipeline.restart_rollout=true starts them again once per iteration")
        self._sender.resend()  # the version they held, from the transport: the trainer may have stepped since
        for member in dead:
            self._start(member)
            member.restarted_at = self.version  # once per iteration
            self._sync(member, self.version)
        with self._lock:
            for member in self._live():
                self._open(member, call)

    def _end(self, call: _Call) -> None:
        """Every group is in: tell the workers, and collect their GenerateDone (bounded)."""
        with self._lock:
            open_members = [m for m in self._live() if m.in_request]
            for member in open_members:
                member.process.send(EndPrompts(call.id), "ending a generate request")
        call.await_done(open_members, self.sync_timeout_s)
        for member in open_members:
            member.in_request = False

    def _on_message(self, member: Member, generation: int, message: object) -> bool:
        """Reader thread of `member`: deal on each group, route markers; True when the message was taken."""
        with self._lock:
            call = self._call
            if is_stale(member, generation, message, call):
                return True
            if isinstance(message, Closed):
                self._drop(member, str(member.process.died(f"generating at version {self.version}")))
                return False  # a synchronous wait on it learns of the death from its inbox
            if isinstance(message, GroupReady):
                return self._take_group(member, call, message.group)
            if isinstance(message, GenerateDone):
                member.spans.extend(s._replace(lane=member.lane) for s in message.spans)
                call.done.add(member.id)
                call.out.put(None)
                return True
            if isinstance(message, (Refused, Failed)) and call is not None:
                call.out.put(worker_failure(member.id, message))
                return True
            return False  # Ready, WeightsLoaded: for the synchronous waits

    def _take_group(self, member: Member, call: _Call, group: RolloutGroup) -> bool:
        if group.version != self.version:
            call.out.put(WeightVersionError(f"rollout worker {member.id} sent a group of version {group.version} "
                                            f"for a request at version {self.version}"))
            return True
        call.dealer.done(member.id, group.prompt.index)
        self._deal(member, call)
        call.out.put(group)
        return True

    def _write_fleet_file(self) -> None:
        write_fleet_file(self.fleet_file, [m.row() for m in self.members])

