"""One worker of the split fleet as the controller sees it: its process (restarted as a new generation), the
version it acknowledged, whether it holds a request, why it was lost, and its busy spans.

    start(receiver, on_message)  a new process (the old one stopped first); alive, version unknown
    acknowledge(version)         wait for start-up, then for the worker to load `version` from the transport
    open_request / send_prompts  a generate request's first prompts, then more as its groups finish
    lose(why)                    out of the fleet: killed, its reason kept for fleet.json and the last error
"""
from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.metrics import Span
from engine.rollout.base import SamplingParams
from engine.rollout.fleet.messages import Generate, Prompts
from engine.rollout.fleet.process import RolloutWorkerDied, WeightSyncTimeout, WorkerProcess
from engine.rollout.fleet.transports import WeightReceiver
from engine.rollout.fleet.worker import WorkerSpec
from engine.types import PromptItem


@dataclass(slots=True)
class Member:
    """One worker of the fleet; `window` is how many prompts it may have in flight."""

    id: int
    spec: WorkerSpec
    window: int
    process: WorkerProcess | None = None
    alive: bool = False
    version: int = -1
    in_request: bool = False
    restarts: int = 0  # processes started after the first
    generation: int = 0  # which of its processes is current (a reader thread of an older one is ignored)
    restarted_at: int = -1  # the version at which it was last restarted mid-generate (once per iteration)
    lost: str = ""  # why it was last dropped
    spans: list[Span] = field(default_factory=list)

    @property
    def lane(self) -> str:
        return f"rollout-{self.id}"

    def start(self, receiver: WeightReceiver, on_message: Callable[[Member, int, object], bool]) -> None:
        """A new process; its reader thread calls `on_message(self, generation, message)`, so the last words of
        a replaced process can be told apart."""
        if self.process is not None:
            self.process.stop()
            self.restarts += 1
        self.generation += 1
        generation = self.generation
        self.process = WorkerProcess(self.spec, receiver, on_message=lambda message: on_message(self, generation,
                                                                                                message))
        self.alive, self.version, self.in_request = True, -1, False

    def acknowledge(self, version: int, timeout_s: float) -> None:
        """The worker has loaded `version` (its load spans kept): WeightSyncTimeout when no acknowledgement comes
        within `timeout_s`, RolloutWorkerDied when it dies meanwhile."""
        who = f"rollout worker {self.id}"
        self.process.await_ready(who)
        try:
            reply = self.process.load_weights(version, timeout_s, who)
        except TimeoutError:
            raise WeightSyncTimeout(f"{who} (pid {self.process.pid}) did not acknowledge weights version {version} "
                                    f"within pipeline.sync_timeout_s={timeout_s:g}s") from None
        self.spans.extend(s._replace(lane=self.lane) for s in reply.spans)
        self.version = version

    def open_request(self, request_id: int, version: int, prompts: list[PromptItem], params: SamplingParams) -> None:
        """Send a generate request with its first prompts (RolloutWorkerDied if the process is gone)."""
        self.in_request = True
        self.process.progress_at = time.monotonic()  # its stall clock starts with the request
        self.process.send(Generate(request_id, version, prompts, params), "receiving a generate request")

    def send_prompts(self, request_id: int, prompts: list[PromptItem]) -> None:
        """More prompts for the open request; a dead process is left to its reader, which reports it Closed (the
        fleet then reclaims these prompts with the rest)."""
        if prompts:
            with contextlib.suppress(RolloutWorkerDied):
                self.process.send(Prompts(request_id, prompts), "receiving prompts")

    def lose(self, why: str) -> None:
        self.alive = self.in_request = False
        self.lost = f"worker {self.id}: {why}"
        self.process.kill()

    def row(self) -> dict:
        """Its fleet.json row."""
        return {"id": self.id, "kind": "worker", "host": socket.gethostname(), "device": self.spec.device,
                "pid": self.process.pid if self.process else None, "engine": "native", "version": self.version,
                "alive": self.alive, "restarts": self.restarts}


def stop_all(members: list[Member]) -> None:
    for member in members:
        if member.process is not None:
            member.process.stop()
