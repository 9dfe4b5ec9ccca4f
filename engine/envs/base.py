"""The environment contract: what a multi-turn rollout asks of an environment, and the limits around it.

One `Environment` object lives for one trajectory (one of a prompt's G samples). The rollout engine calls
`step(turn_text)` with each finished assistant turn (decoded, stop token excluded) and gets back either
- an `Observation`: text the engine tokenizes *once*, appends after the turn as context (attended to, never
  trained on), and generation continues from there; or
- an `EpisodeEnd`: the trajectory is over; `reward_parts` (may be empty) are added to the recipe's reward.

The engine, not the environment, enforces `EnvLimits`: at most `max_turns` assistant turns and `max_tokens`
tokens after the prompt (turns and observations together); a trajectory that reaches either ends as if the
environment had ended it, with no reward parts, and is marked truncated. `step` must not raise on any turn
text (model output is arbitrary): a malformed tool call is an observation saying so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Observation:
    """What the environment answers to a turn; `text` is rendered as the chat template's tool/env message."""

    text: str
    role: str = "tool"  # the chat-template role the engine renders `text` as
    tool_calls: int = 0  # tool calls this answer executed
    tool_errors: int = 0  # of which failed (malformed call, unknown tool, tool raised or timed out)


@dataclass(frozen=True, slots=True)
class EpisodeEnd:
    """The trajectory is over; `reward_parts` are named scores added to the recipe's reward functions."""

    reward_parts: dict[str, float] = field(default_factory=dict)


Step = Observation | EpisodeEnd


class Environment(Protocol):
    """One trajectory's environment; created per sample from its prompt by an `EnvironmentFactory`."""

    def step(self, turn: str) -> Step: ...


class EnvironmentFactory(Protocol):
    def __call__(self, prompt_text: str, reference: str) -> Environment: ...


@dataclass(frozen=True, slots=True)
class EnvLimits:
    max_turns: int = 4  # assistant turns per trajectory, the first included
    max_tokens: int = 512  # tokens after the prompt: every turn and observation together
    call_timeout_s: float = 10.0  # one tool call; past it the call fails and the episode goes on
    step_timeout_s: float = 60.0  # one environment step, all its calls; past it the trajectory ends (cut)

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError(f"env.max_turns must be >= 1, got {self.max_turns}")
        if self.max_tokens < 1:
            raise ValueError(f"env.max_tokens must be >= 1, got {self.max_tokens}")
        if self.call_timeout_s <= 0:
            raise ValueError(f"env.call_timeout_s must be > 0, got {self.call_timeout_s}")
        if self.step_timeout_s < self.call_timeout_s:
            raise ValueError(f"env.step_timeout_s ({self.step_timeout_s}) must be >= env.call_timeout_s "
                             f"({self.call_timeout_s})")
