"""Stop conditions: which token ids end a sequence, and when its newest token completes a stop string.

Stop ids. A Hugging Face model names the tokens that end its output in `generation_config.eos_token_id`, an
int or a list, and HF `generate` stops at every one of them: Qwen2.5 lists <|im_end|> and <|endoftext|>,
Llama-3-Instruct <|eot_id|> and <|end_of_text|>. A tokenizer has one eos, often the end of a document rather
than of a chat turn, so a sampler that knew only `tokenizer.eos_token_id` would run chat completions on to
max_new_tokens, and the trainer would see each one as truncated.

Stop strings (`rollout.stop`, `cadence eval --stop`). They are text, not tokens, because one string has many
spellings in tokens and can begin or end inside a token ("\\n\\n" may be one token, two, or the tail of
".\\n\\n"; a multi-byte character can be split over byte tokens). So a row's recent tokens are decoded after
every step and searched. Only a bounded tail is decoded (a string of b UTF-8 bytes spans at most b tokens,
since every token spells at least one byte), and most steps skip even that: a token can complete a string
only if its own text holds the string's last character (see `StopStrings`). Matching is on the completion's
text alone, never the prompt's, as in vLLM. Deviation from vLLM's incremental detokenizer: the first
completion token is decoded without the prompt before it, so a SentencePiece tokenizer spells it without its
leading space (a string " x" cannot match at the very start of a completion).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import GenerationConfig

Decode = Callable[[list[int]], str]

GENERATION_CONFIG_FILE = "generation_config.json"
# Tokens decoded in front of the longest stop string's bytes: the window's first token may decode differently
# from in context (SentencePiece drops its leading space, a byte token may be half a character).
_WINDOW_SLACK = 2
_REPLACEMENT = "\ufffd"  # what a partial UTF-8 character decodes to


def stop_token_ids(tokenizer, generation_config: GenerationConfig | None) -> tuple[int, ...]:
    """tokenizer.eos_token_id, then every id of generation_config.eos_token_id (an int or a list), without
    repeats, in that order; None or a missing id adds nothing."""
    ids: list[int | None] = [tokenizer.eos_token_id]
    eos = generation_config.eos_token_id if generation_config is not None else None
    ids.extend(eos if isinstance(eos, (list, tuple)) else [eos])
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


def load_generation_config(folder: Path, model=None) -> GenerationConfig | None:
    """The generation config of a model folder: its generation_config.json when there is one (that file is
    what names a chat model's end-of-turn ids), else `model.generation_config` (transformers derives one from
    config.json), else None."""
    if (Path(folder) / GENERATION_CONFIG_FILE).is_file():
        from transformers import GenerationConfig

        return GenerationConfig.from_pretrained(folder, local_files_only=True)
    return model.generation_config if model is not None else None


def token_decoder(tokenizer) -> Decode:
    """The decode that stop strings are matched on: special tokens kept (a string may name one, e.g.
    "<|im_end|>") and no clean-up of spaces (it would make text depend on the tokens that follow)."""
    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    return decode


class StopStrings:
    """Per-row stop-string matcher. Keep one `new_tail()` per sequence, append each sampled token to it, and
    ask `completes(tail)`; the sequence must stop at the first True.

    That contract is what makes a substring test enough: had the string been complete before the newest token,
    an earlier call would have returned True. Cost per call: a dict lookup for most tokens; a decode of at
    most `window` tokens when the newest token's own text holds the last character of a stop string, is empty,
    or is part of a character (the prefilter). The prefilter is off when a string ends in a space: SentencePiece
    decodes a token's leading space only in context, so the token's own text would hide it.
    """

    def __init__(self, strings: Sequence[str], decode: Decode) -> None:
        if not strings or any(not s for s in strings):
            raise ValueError(f"stop strings must be a non-empty list of non-empty strings, got {list(strings)!r}")
        self.strings = tuple(strings)
        self.decode = decode
        self.window = max(len(s.encode("utf-8")) for s in self.strings) + _WINDOW_SLACK
        self._last_chars = frozenset(s[-1] for s in self.strings)
        self._prefilter = not any(s.endswith(" ") for s in self.strings)
        self._may_complete: dict[int, bool] = {}  # token id -> can it hold the end of a stop string

    def new_tail(self) -> deque[int]:
        """An empty token history for one sequence; it keeps the `window` newest tokens."""
        return deque(maxlen=self.window)

    def completes(self, tail: Sequence[int]) -> bool:
        """Does the newest token of `tail` (the sequence's latest tokens, oldest first) complete a stop string?"""
        if self._prefilter and not self._may_end_a_string(tail[-1]):
            return False
        text = self.decode(list(tail))
        return any(s in text for s in self.strings)

    def first_stop(self, token_ids: Sequence[int]) -> int | None:
        """Index of the token that completes the first stop string in `token_ids`, or None: the matcher run over
        a whole token list (for a caller that has the tokens already, and for tests)."""
        tail = self.new_tail()
        for i, token in enumerate(token_ids):
            tail.append(token)
            if self.completes(tail):
                return i
        return None

    def _may_end_a_string(self, token: int) -> bool:
        known = self._may_complete.get(token)
        if known is None:
            text = self.decode([token])
            known = not text or _REPLACEMENT in text or not self._last_chars.isdisjoint(text)
            self._may_complete[token] = known
        return known
