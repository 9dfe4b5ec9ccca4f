"""The colocated fleet of a torchrun launch: every rank's device generates, rank 0's controller deals.

Each rank holds an engine on its own device: native, with a compute-dtype copy of the policy, or vLLM in its
own processes (engine/rollout/vllm.py). The weights reach it at every sync from the full tensors the rank
gathers anyway (each `full_tensor()` is a collective every rank makes): no extra broadcast. An engine here
must take a PromptSource in `generate` (both do) and say its `max_batch_sequences`.

Prompts and groups travel over the control plane (engine/parallel/control.py)
in the messages of the split fleet (engine/rollout/fleet/messages.py):

    rank 0: RankFleet (controller's thread)                rank r > 0: follow() (engine/parallel/spmd.py)
    load_weights(k): TrainerGroup sent ("sync", k); each   gather each full parameter; its engine copies it
      gathered tensor is copied by the local engine        and records version k
    generate(P): Dealer(P)
      -- ("generate", Generate(id, k, first prompts)) -->  engine.generate(RequestSource over the control plane)
      reader thread of r  <-- GroupReady(group) --------   one per finished group
        deals -- Prompts(more) ------------------------->  admitted as rows free up (continuous batching)
      queue empty -- EndPrompts ------------------------>  finish what is in flight
                          <-- GenerateDone(spans) -------
      the local engine takes from the same dealer between its decode steps; the stream yields its groups and
      the followers' as they arrive; every group's version is checked against k on arrival

Dealing is dynamic: an engine holds at most its window of prompts (rollout.in_flight, or its rows' worth, and
never more than its fair share ceil(P / engines) of the call, so a small call still reaches every rank), and
gets more as its groups finish. Per-prompt seeds (engine/rollout/native.py) make a prompt's samples the same
whichever rank drew it. A follower that dies ends the whole job (the control plane fails fast), so no prompt is
ever dealt twice. Waits are bounded: a follower that sends nothing for `stall_timeout_s` within a request is an
error (rank 0 raises, and the job ends); a follower waits for rank 0's next prompts at most `peer_timeout_s`.
Spans come back relative to the follower's receipt of the request and are re-based on rank 0's send time (ranks
may be on hosts with unrelated clocks); lane `rollout-<rank>`.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import metrics as M
from engine.metrics import Span
from engine.parallel.control import ControlPlane
from engine.rollout.base import RolloutEngine, SamplingParams
from engine.rollout.fleet.dealer import Dealer, share_window
from engine.rollout.fleet.messages import EndPrompts, Generate, GenerateDone, GroupReady, Prompts, Refused
from engine.rollout.fleet.process import RolloutWorkerError, WeightVersionError
from engine.rollout.fleet.roster import write_fleet_file
from engine.rollout.fleet.worker import RequestSource
from engine.rollout.sampling import check_sampling_params
from engine.timeline import engine_busy
from engine.types import PromptItem, RolloutGroup

LOCAL = 0  # rank 0's own engine; a follower's member id is its rank


@dataclass(slots=True)
class _Call:
    """One generate() call: the dealer, the stream of what the followers' reader threads hand over."""

    id: int
    dealer: Dealer
    params: SamplingParams
    version: int
    window: int  # prompts an engine may hold in flight
    sent_at: float  # rank 0's perf_counter when the followers were sent the request
    out: queue.Queue = field(default_factory=queue.Queue)  # groups, _Done markers and errors
    lock: threading.Lock = field(default_factory=threading.Lock)  # a deal and its message go out together
    ended: bool = False  # EndPrompts sent


@dataclass(frozen=True, slots=True)
class _Done:
    rank: int


class LocalSource:
    """Rank 0's engine's PromptSource: its first share, then the dealer's prompts up to `window` in flight.
    None once nothing waits: a follower's death ends the job, so no prompt comes back to be dealt again."""

    def __init__(self, fleet: RankFleet, call: _Call, first: list[PromptItem]) -> None:
        self.fleet, self.call, self.first = fleet, call, first

    def take(self, k: int, wait: bool) -> list[PromptItem] | None:
        if self.first:
            out, self.first = self.first[:k], self.first[k:]
            return out
        dealer = self.call.dealer
        more = self.fleet.deal(self.call, LOCAL, min(self.call.window, dealer.in_flight(LOCAL) + k))
        return more if more or dealer.waiting else None


class RankFleet:
    """RolloutEngine (engine/rollout/base.py) over rank 0's engine and one engine per follower rank."""

    def __init__(self, local: RolloutEngine, control: ControlPlane, world_size: int, *, in_flight: int,
                 stall_timeout_s: float, peer_timeout_s: float, fleet_file: Path | None = None,
                 engines: list[dict] | None = None) -> None:
        """`in_flight`: prompts an engine may hold (0: as many as its rows take, `max_batch_sequences / n`, so
        evaluation's n=1 fills the engines as a training rollout does)."""
        self.local, self.control, self.in_flight = local, control, in_flight
        self.followers = list(range(1, world_size))
        self.stall_timeout_s, self.peer_timeout_s = stall_timeout_s, peer_timeout_s
        self.fleet_file, self.engines = fleet_file, engines or []  # fleet.json: one row per rank's engine
        self._spans: list[Span] = []
        self._spans_lock = threading.Lock()
        self._call_ids = itertools.count()

    @property
    def version(self) -> int:
        return self.local.version

    # ------------------------------------------------------------------ RolloutEngine
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Rank 0's engine copies each gathered tensor; the followers' engines copy theirs as they gather
        (TrainerGroup.rollout_weights sent them ("sync", version))."""
        self.local.load_weights(named_tensors, version)
        self._write_fleet_file()

    def _write_fleet_file(self) -> None:
        """runs/<name>/fleet.json: every rank's engine at the version just synced (a follower that dies stops
        the job, so every listed engine is alive while the run is)."""
        write_fleet_file(self.fleet_file, [{**row, "version": self.version, "alive": True} for row in self.engines])

    def generate(self, prompts: Sequence[PromptItem], params: SamplingParams) -> Iterator[RolloutGroup]:
        """Deal `prompts` now (rank 0's engine its window first, then each follower its own); the iterator
        yields every group as it arrives, from any rank."""
        check_sampling_params(params)
        prompts = list(prompts)
        if any(not p.prompt_ids for p in prompts):
            raise ValueError("a prompt has no tokens: there is nothing to condition on")
        # At most a fair share ceil(P / engines), so a call smaller than the engines' rows reaches every rank.
        window = share_window(len(prompts), 1 + len(self.followers),
                              self.in_flight or max(1, self.local.max_batch_sequences // params.n))
        call = _Call(next(self._call_ids), Dealer(prompts), params, self.version, window, time.perf_counter())
        first = call.dealer.take(LOCAL, window)
        for rank in self.followers:
            with call.lock:
                share = call.dealer.take(rank, window)
                self.control.send(rank, ("generate", Generate(call.id, call.version, share, params)))
            threading.Thread(target=self._read, args=(call, rank), name=f"cadence-rank-rollout-{rank}",
                             daemon=True).start()
        self.deal(call, LOCAL, 0)  # nothing left after the first shares: the followers are told at once
        return self._stream(call, LocalSource(self, call, first), len(prompts))

    def pop_spans(self) -> list[Span]:
        """Every engine's busy intervals since the last call: rank r's in lane `rollout-<r>`."""
        self._hold_local_spans()
        with self._spans_lock:
            out, self._spans = self._spans, []
        return out

    def metrics(self) -> dict[str, float]:
        """Engines (one per rank) and each engine's generation busy seconds since the spans were last popped."""
        self._hold_local_spans()
        with self._spans_lock:
            busy = engine_busy(self._spans)
        return {M.ROLLOUT_ENGINES: float(1 + len(self.followers)), **busy}

    def close(self) -> None:
        """Rank 0's engine (a vLLM engine's processes and shared blocks); each follower closes its own when its
        rank stops."""
        self.local.close()

    def _hold_local_spans(self) -> None:
        local = [s._replace(lane=f"rollout-{LOCAL}") for s in self.local.pop_spans()]
        with self._spans_lock:
            self._spans.extend(local)

    # ------------------------------------------------------------------ dealing
    def deal(self, call: _Call, member: int, window: int) -> list[PromptItem]:
        """Prompts for `member` up to `window` in flight (a follower's go out as Prompts); once none waits,
        every follower is told EndPrompts, after any Prompts of this deal."""
        with call.lock:
            more = call.dealer.take(member, window)
            if more and member != LOCAL:
                self.control.send(member, Prompts(call.id, more))
            if not call.ended and call.dealer.waiting == 0:
                call.ended = True
                for rank in self.followers:
                    self.control.send(rank, EndPrompts(call.id))
            return more

    def _read(self, call: _Call, rank: int) -> None:
        """Reader thread of one follower for one call: deal on each group, hand everything to the stream."""
        try:
            while True:
                message = self.control.receive(rank, f"waiting for rank {rank}'s next group of request {call.id}",
                                               self.stall_timeout_s)
                if isinstance(message, GroupReady) and message.request_id == call.id:
                    if message.group.version != call.version:
                        raise WeightVersionError(f"rank {rank} sent a group of version {message.group.version} for "
                                                 f"a request at version {call.version}")
                    call.dealer.done(rank, message.group.prompt.index)
                    self.deal(call, rank, call.window)
                    call.out.put(message.group)
                elif isinstance(message, GenerateDone) and message.request_id == call.id:
                    rebased = [s._replace(lane=f"rollout-{rank}", start_s=s.start_s + call.sent_at,
                                          end_s=s.end_s + call.sent_at) for s in message.spans]
                    with self._spans_lock:
                        self._spans.extend(rebased)
                    call.out.put(_Done(rank))
                    return
                elif isinstance(message, Refused):
                    raise WeightVersionError(f"rank {rank} refused to generate: {message.reason}")
                else:
                    raise RolloutWorkerError(f"rank {rank} answered request {call.id} with {message!r}")
        except Exception as exc:  # PeerTimeout, a protocol error, a lost connection: the stream raises it
            call.out.put(exc)

    def _stream(self, call: _Call, source: LocalSource, total: int) -> Iterator[RolloutGroup]:
        """Rank 0's engine runs in this thread; between its groups, and after its last, the followers' groups
        that arrived are yielded too."""
        remaining, open_ranks = total, set(self.followers)
        for group in self.local.generate(source, call.params):
            call.dealer.done(LOCAL, group.prompt.index)
            remaining -= 1
            yield group
            for item in self._arrived(call, open_ranks, block=False):
                remaining -= 1
                yield item
        while remaining or open_ranks:
            for item in self._arrived(call, open_ranks, block=True):
                remaining -= 1
                yield item
        if remaining:
            raise RolloutWorkerError(f"request {call.id} ended {remaining} groups short")

    def _arrived(self, call: _Call, open_ranks: set[int], block: bool) -> Iterator[RolloutGroup]:
        """The followers' groups waiting in the call's queue (with `block`: at least one item, groups or an
        end). Each reader thread's wait is bounded, so a blocking get ends too."""
        while True:
            try:
                item = call.out.get(timeout=self.stall_timeout_s + self.peer_timeout_s) if block else \
                    call.out.get_nowait()
            except queue.Empty:
                if block:
                    raise RolloutWorkerError(f"no group or end of request {call.id} from ranks {sorted(open_ranks)} "
                                             f"within {self.stall_timeout_s + self.peer_timeout_s:g}s") from None
                return
            block = False
            if isinstance(item, Exception):
                raise item
            if isinstance(item, _Done):
                open_ranks.discard(item.rank)
            else:
                yield item


def serve_generate(engine: RolloutEngine, control: ControlPlane, request: Generate, timeout_s: float) -> None:
    """Follower side of one request: generate its prompts and those dealt later, send each group as it
    finishes, then GenerateDone with the engine's spans relative to the request's receipt."""
    received_at = time.perf_counter()
    if request.version != engine.version:
        control.send(0, Refused(request.request_id, f"this rank's engine holds weights version {engine.version}, "
                                                    f"the request is for version {request.version}"))
        return
    engine.pop_spans()  # what it did before (the weight copy) is in rank 0's sync time
    doing = f"waiting for rank 0's prompts of request {request.request_id}"
    source = RequestSource(request, lambda block: control.receive(0, doing, timeout_s) if block else control.poll(0))
    for group in engine.generate(source, request.params):
        control.send(0, GroupReady(request.request_id, group))
    spans = [s._replace(start_s=s.start_s - received_at, end_s=s.end_s - received_at) for s in engine.pop_spans()]
    control.send(0, GenerateDone(request.request_id, spans))
