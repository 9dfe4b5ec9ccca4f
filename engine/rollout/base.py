"""The rollout-engine interface: what the controller needs from any generator (native, vLLM, vllm-ascend)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from engine.metrics import Span
from engine.types import PromptItem, RolloutGroup


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to sample. temperature == 0 means greedy (logprobs are then those of the untempered policy).

    A sequence ends at the engine's eos, at any of `stop_token_ids`, or at the token that completes any of
    `stop_strings` (engine/rollout/stopping.py); that token is kept and the completion is `finished`.
    """

    n: int = 1  # G: samples per prompt
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()  # matched on the decoded completion; a string may span tokens
    seed: int = 0  # generation is a pure function of (weights, prompts, params)
    ignore_eos: bool = False  # no token id ends a sequence (eos nor stop_token_ids): each runs to max_new_tokens


class PromptSource(Protocol):
    """Where an engine's prompts come from while it generates: a fixed list, or a fleet's dealer handing each
    engine more prompts as it frees capacity (engine/rollout/fleet/dealer.py)."""

    def take(self, k: int, wait: bool) -> list[PromptItem] | None:
        """Up to `k` prompts. [] when none is available now (wait=False); with wait=True it blocks until some
        are. None: exhausted, no prompt will come any more."""
        ...


class ListSource:
    """A fixed list of prompts, handed out in order."""

    def __init__(self, prompts: Sequence[PromptItem]) -> None:
        self._prompts = list(prompts)
        self._next = 0

    def take(self, k: int, wait: bool) -> list[PromptItem] | None:
        if self._next >= len(self._prompts):
            return None
        out = self._prompts[self._next:self._next + k]
        self._next += len(out)
        return out


class RolloutEngine(Protocol):
    """Generates G completions per prompt with the weights of one policy version.

    `generate` yields each group as soon as all of its G samples have finished, so a consumer can start
    training on it while the other groups are still being generated.
    """

    version: int

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Replace the engine's weights with the given ones and record their policy version."""
        ...

    def generate(self, prompts: Sequence[PromptItem], params: SamplingParams) -> Iterator[RolloutGroup]:
        """Yield one RolloutGroup per prompt (in completion order), stamped with `self.version`."""
        ...

    def pop_spans(self) -> list[Span]:
        """The engine's busy intervals since the last call (lane "rollout", stages "generate" and
        "load_weights"), in seconds of `time.perf_counter()` on this host; for the pipeline metrics."""
        ...

    def metrics(self) -> dict[str, float]:
        """The engine's figures since the last call: at least `rollout/engines` (how many engines generate)."""
        ...

    def close(self) -> None:
        """Release what the engine holds (a worker process, a transport). Idempotent."""
        ...
