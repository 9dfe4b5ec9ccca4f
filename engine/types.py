"""Typed containers passed between the controller's stages.

Shape legend used across Cadence: B prompts, G samples per prompt, P prompt length, R response length,
T packed tokens, V vocabulary, H heads, D head dim.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True, slots=True)
class PromptItem:
    """One prompt of an iteration: its tokens and what the reward needs to judge the answer."""

    index: int  # position of the prompt in the dataset stream (unique within a run)
    prompt_ids: list[int]
    reference: str  # ground-truth final answer, e.g. "42"
    text: str = ""  # the rendered prompt (for logs and reward models)


@dataclass(frozen=True, slots=True)
class Episode:
    """How a multi-turn trajectory went (engine/rollout/multiturn.py); None on a single-turn completion."""

    turns: int  # assistant turns, the first included
    tool_calls: int = 0
    tool_errors: int = 0  # failed calls: malformed, unknown tool, raised, timed out
    reward_parts: tuple[tuple[str, float], ...] = ()  # the environment's own scores, added to the reward
    env_time_s: float = 0.0  # time its environment steps took


@dataclass(frozen=True, slots=True)
class Completion:
    """One sampled response: token ids (stop token included if it was produced) and their log-probs
    under the sampling policy (after temperature), one per token."""

    token_ids: list[int]
    logprobs: list[float]
    finished: bool  # True when a stop token ended it, False when max_new_tokens did
    # Multi-turn (engine/envs): per token, False where the environment appended it (an observation: context
    # the policy attends to, never sampled, never trained on; its `logprobs` entry is 0). None: all sampled.
    sampled: list[bool] | None = None
    episode: Episode | None = None

    def __post_init__(self) -> None:
        if self.sampled is not None and len(self.sampled) != len(self.token_ids):
            raise ValueError(f"Completion.sampled has {len(self.sampled)} flags for {len(self.token_ids)} tokens")

    @property
    def num_sampled(self) -> int:
        return len(self.token_ids) if self.sampled is None else sum(self.sampled)


@dataclass(slots=True)
class RolloutGroup:
    """One prompt with its G completions, produced by the weights of `version`.

    The trainer raises on a group whose version is not the current policy version: on-policy is checked.
    """

    prompt: PromptItem
    completions: list[Completion]
    version: int
    texts: list[str] = field(default_factory=list)  # decoded completions, filled by the scorer
    rewards_G: torch.Tensor | None = None  # float32 (G,): what advantages are computed from
    scores_G: torch.Tensor | None = None  # float32 (G,): the reward function's scores, before length shaping
    advantages_G: torch.Tensor | None = None  # float32 (G,): set by the controller (algorithm.advantage)
    extracted: list[bool] = field(default_factory=list)  # did the reward find an answer, per sample
    reward_timeouts: int = 0  # reward-function calls that ran past reward.timeout_s (scored 0), filled by the scorer
    reward_crashes: int = 0  # reward-function calls that killed their worker process (scored 0), filled by the scorer

    @property
    def group_size(self) -> int:
        return len(self.completions)
