"""Messages between the trainer process and its rollout worker, one typed dataclass each.

    trainer -> worker                          worker -> trainer
    LoadWeights(version)                       Ready(pid)                     once, after the model is built
    Generate(request_id, version, prompts,     WeightsLoaded(version, spans)  the ack of a LoadWeights
             params)                           GroupReady(request_id, group)  one per finished group
    Prompts(request_id, prompts)  more of them GenerateDone(request_id, spans) after EndPrompts, all done
    EndPrompts(request_id)        no more
    Shutdown()
                                               Refused(request_id, reason)    a Generate for a version it lacks
                                               Failed(where, traceback)       an exception in the worker
                                               Alive(steps)                   every HEARTBEAT_S, from a thread:
                                                                              the engine's decode steps so far

Spans are on `time.perf_counter()`, which on Linux is CLOCK_MONOTONIC, one clock for every process of the
host (the worker is always on the trainer's host: they talk through pipes).
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.metrics import Span
from engine.rollout.base import SamplingParams
from engine.types import PromptItem, RolloutGroup


@dataclass(frozen=True, slots=True)
class LoadWeights:
    version: int  # the transport's buffers hold this version now


@dataclass(frozen=True, slots=True)
class Generate:
    request_id: int
    version: int  # the version the trainer believes the worker holds; the worker refuses any other
    prompts: list[PromptItem]
    params: SamplingParams  # stop ids and stop strings included: the worker stops where a colocated engine would


@dataclass(frozen=True, slots=True)
class Prompts:
    """More prompts for an open request (the fleet's dealer hands them out as the worker frees capacity)."""

    request_id: int
    prompts: list[PromptItem]


@dataclass(frozen=True, slots=True)
class EndPrompts:
    """No more prompts for this request: finish what is in flight, then GenerateDone."""

    request_id: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


@dataclass(frozen=True, slots=True)
class Ready:
    pid: int


@dataclass(frozen=True, slots=True)
class WeightsLoaded:
    version: int
    spans: list[Span]


@dataclass(frozen=True, slots=True)
class GroupReady:
    request_id: int
    group: RolloutGroup


@dataclass(frozen=True, slots=True)
class GenerateDone:
    request_id: int
    spans: list[Span]


@dataclass(frozen=True, slots=True)
class Refused:
    request_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Alive:
    steps: int  # decode steps the worker's engine has taken: a generate that stops advancing has stalled


@dataclass(frozen=True, slots=True)
class Failed:
    where: str
    traceback: str
