"""One multi-turn trajectory's bookkeeping, shared by the native (engine/rollout/multiturn.py) and the vLLM
(engine/rollout/vllm_multiturn.py) multi-turn engines; each engine only adds how it feeds the model.

    sampled turn -> step_environment (thread pool) -> collect_observations -> apply_step:
        EpisodeEnd    the trajectory ends, finished, with the environment's reward parts
        Observation   its ids are appended as context (log-prob 0.0, sampled False) and the next turn opens,
                      unless max_turns or max_tokens leaves no room for it (then it is cut, unfinished)
        raised, or no answer within step_timeout_s: one tool error, cut

The record keeps exactly the ids that were sampled and appended (never decoded and re-encoded), so the trainer
trains on what the sampler produced; `completion()` turns it into the Completion the trainer reads.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field

from engine.envs.base import EpisodeEnd, Observation
from engine.types import Completion, Episode


@dataclass(slots=True)
class EpisodeRecord:
    env: object  # the Environment
    ids: list[int] = field(default_factory=list)  # sampled turns and appended observations, in order
    logps: list[float] = field(default_factory=list)
    sampled: list[bool] = field(default_factory=list)
    turns: int = 1
    tool_calls: int = 0
    tool_errors: int = 0
    env_time_s: float = 0.0
    future: Future | None = None  # the environment's step in flight
    since: float = 0.0  # when it was submitted
    done: bool = False
    finished: bool = False  # ended by its environment (not by a limit)
    reward_parts: tuple[tuple[str, float], ...] = ()

    def step_environment(self, pool: Executor, turn_text: str) -> None:
        self.future, self.since = pool.submit(self.env.step, turn_text), time.perf_counter()

    def end(self, finished: bool) -> None:
        self.done, self.finished, self.future = True, finished, None

    def completion(self) -> Completion:
        episode = Episode(turns=self.turns, tool_calls=self.tool_calls, tool_errors=self.tool_errors,
                          reward_parts=self.reward_parts, env_time_s=self.env_time_s)
        return Completion(token_ids=list(self.ids), logprobs=list(self.logps), finished=self.finished,
                          sampled=list(self.sampled), episode=episode)


def apply_step(t: EpisodeRecord, step: Observation | EpisodeEnd, elapsed: float, options) -> list[int] | None:
    """Record the environment's answer to `t`'s last turn (`options`: the engine's MultiTurnOptions); returns
    the observation ids appended, None when the trajectory ended."""
    t.env_time_s += elapsed
    t.future = None
    if isinstance(step, EpisodeEnd):
        t.reward_parts = tuple(sorted(step.reward_parts.items()))
        t.end(finished=True)
        return None
    t.tool_calls += step.tool_calls
    t.tool_errors += step.tool_errors
    obs_ids = options.encode(options.observation_format.format(text=step.text))
    if t.turns >= options.limits.max_turns or len(t.ids) + len(obs_ids) >= options.limits.max_tokens:
        t.end(finished=False)  # no room for another turn: the trajectory is cut here
        return None
    t.ids += obs_ids
    t.logps += [0.0] * len(obs_ids)
    t.sampled += [False] * len(obs_ids)
    t.turns += 1
    return obs_ids


def collect_observations(records: Sequence[EpisodeRecord], options,
                         on_observation: Callable[[EpisodeRecord, list[int]], None]) -> None:
    """Apply every environment answer that has arrived (`on_observation(t, ids)` after each appended
    observation); a step that raised (the contract says it never does) or is past its bound ends its
    trajectory, not the run."""
    now, bound = time.perf_counter(), options.limits.step_timeout_s
    for t in records:
        if t.future is None:
            continue
        if t.future.done() and t.future.exception() is None:
            obs_ids = apply_step(t, t.future.result(), time.perf_counter() - t.since, options)
            if obs_ids is not None:
                on_observation(t, obs_ids)
        elif t.future.done() or now - t.since > bound:
            t.tool_errors += 1
            t.env_time_s += now - t.since
            t.end(finished=False)


def wait_for_an_environment(records: Sequence[EpisodeRecord], step_timeout_s: float) -> None:
    """Nothing to compute: block until an environment answers (or the first step's bound passes)."""
    pending = [t for t in records if t.future is not None]
    if pending:
        left = step_timeout_s - (time.perf_counter() - min(t.since for t in pending))
        wait([t.future for t in pending], timeout=max(left, 0.0) + 1e-3, return_when=FIRST_COMPLETED)
