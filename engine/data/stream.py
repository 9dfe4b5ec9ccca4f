"""The training prompt stream: B prompts per iteration, epoch after epoch, resumable exactly.

Every example is rendered and tokenised once, up front; prompts longer than `max_prompt_tokens` are
dropped there and counted (`num_skipped`). Epoch e visits the kept prompts in an order that is a pure
function of (seed, e), so the stream's whole position is two integers (epoch, cursor): a stream restored
with `load_state_dict` after k batches yields exactly the batches an uninterrupted one would, with
nothing lost or replayed. A batch that reaches the end of an epoch continues into the next one.

`PromptItem.index = epoch * len(examples) + i`, where i is the example's position in the list given to
the constructor: unique within the run, and `index % len(examples)` finds the example (and its line).
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engine.config import DataConfig
from engine.data.prompts import CHAT_INSTRUCTION, Messages, PromptFormat, encode_prompt, render_prompt
from engine.types import PromptItem


class QuestionAnswer(Protocol):
    """What the stream needs of an example: gsm8k.Example and synthetic.Problem both fit."""

    question: str | Messages
    answer: str


@dataclass(frozen=True, slots=True)
class _Prompt:
    example_index: int
    prompt_ids: tuple[int, ...]  # a tuple, so no PromptItem handed out can alter the stream's copy
    text: str
    reference: str


class PromptStream:
    def __init__(
        self,
        examples: Sequence[QuestionAnswer],
        tokenizer: Any,
        prompt_format: PromptFormat,
        system_prompt: str,
        max_prompt_tokens: int,
        seed: int,
        shuffle: bool,
        instruction: str = CHAT_INSTRUCTION,
    ) -> None:
        if max_prompt_tokens < 1:
            raise ValueError(f"data.max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        self.num_examples = len(examples)
        self.seed = seed
        self.shuffle = shuffle
        self._prompts: list[_Prompt] = []
        for i, example in enumerate(examples):
            text = render_prompt(example.question, tokenizer, prompt_format, system_prompt, instruction)
            ids = encode_prompt(text, tokenizer, prompt_format)
            if len(ids) <= max_prompt_tokens:
                self._prompts.append(_Prompt(i, tuple(ids), text, example.answer))
        self.num_skipped = self.num_examples - len(self._prompts)
        if not self._prompts:
            raise ValueError(f"no prompts to train on: all {self.num_examples} examples are longer than "
                             f"data.max_prompt_tokens={max_prompt_tokens} (or there are none)")
        self._epoch = 0
        self._cursor = 0  # position in the current epoch's order of the next prompt to yield
        self._order_cache: tuple[int, list[int]] = (-1, [])

    @classmethod
    def from_config(cls, examples: Sequence[QuestionAnswer], tokenizer: Any, data: DataConfig, seed: int
                    ) -> PromptStream:
        """The stream a recipe's `data` settings describe."""
        return cls(examples, tokenizer, prompt_format=data.prompt_format, system_prompt=data.system_prompt,
                   max_prompt_tokens=data.max_prompt_tokens, seed=seed, shuffle=data.shuffle,
                   instruction=data.instruction)

    @property
    def num_prompts(self) -> int:
        """Prompts per epoch (examples that were not skipped)."""
        return len(self._prompts)

    @property
    def epoch(self) -> int:
        return self._epoch

    def next_batch(self, batch_size: int) -> list[PromptItem]:
        """The next `batch_size` prompts (B), crossing into the next epoch when this one runs out."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        batch = []
        while len(batch) < batch_size:
            prompt = self._prompts[self._order(self._epoch)[self._cursor]]
            batch.append(PromptItem(
                index=self._epoch * self.num_examples + prompt.example_index,
                prompt_ids=list(prompt.prompt_ids),
                reference=prompt.reference,
                text=prompt.text,
            ))
            self._cursor += 1
            if self._cursor == len(self._prompts):
                self._epoch, self._cursor = self._epoch + 1, 0
        return batch

    def state_dict(self) -> dict[str, int | bool]:
        """The position, plus what must match on restore for the position to mean the same prompts."""
        return {"epoch": self._epoch, "cursor": self._cursor, "seed": self.seed, "shuffle": self.shuffle,
                "num_examples": self.num_examples, "num_prompts": self.num_prompts}

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        """Continue from `state`; raise if it was saved by a stream over other data or another order."""
        mine = self.state_dict()
        for key in ("seed", "shuffle", "num_examples", "num_prompts"):
            if state[key] != mine[key]:
                raise ValueError(f"cannot resume the prompt stream: it was saved with {key}={state[key]!r}, "
                                 f"this run has {key}={mine[key]!r} (same data and data settings are needed)")
        if not (state["epoch"] >= 0 and 0 <= state["cursor"] < self.num_prompts):
            raise ValueError(f"cannot resume the prompt stream: position epoch={state['epoch']}, "
                             f"cursor={state['cursor']} is out of range for {self.num_prompts} prompts")
        self._epoch, self._cursor = int(state["epoch"]), int(state["cursor"])

    def _order(self, epoch: int) -> list[int]:
        """Indices into `_prompts` in the order epoch `epoch` visits them: a pure function of (seed, epoch)."""
        if self._order_cache[0] != epoch:
            order = list(range(len(self._prompts)))
            if self.shuffle:
                random.Random(f"cadence-prompts/{self.seed}/{epoch}").shuffle(order)
            self._order_cache = (epoch, order)
        return self._order_cache[1]
