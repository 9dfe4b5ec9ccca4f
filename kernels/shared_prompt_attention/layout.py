"""The shared-prompt layout: where each group's prompt and responses sit in one packed row.

One packed row holds several groups back to back, then optional trailing padding:

    [ p p p p | a a a | b b | c c c c ][ p p | a | b b b ] . .      (. = pad)
      group 0: prompt, responses 1..3    group 1             tail

Attention rule (the specification, implemented densely by `reference.py`):
a query token may attend to a key token iff both belong to the same group, the key is not
after the query, and the key is either a prompt token or in the query's own response.
Pad queries attend to nothing; every kernel returns zeros for them.

The layout keeps the spans both as host integers (`groups`, used to slice and to build
varlen launches) and as per-token device tensors (`group_ids_T`, `segment_ids_T`, used by
mask-based kernels). It is built once per micro-batch by `engine.packing.pack_groups`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

PAD = -1  # group id and segment id of padding tokens
PROMPT = 0  # segment id of prompt tokens; response k (1-based) has segment id k


@dataclass(frozen=True, slots=True)
class GroupSpan:
    """One group inside the packed row: tokens [start, start + prompt_len + sum(response_lens))."""

    start: int
    prompt_len: int
    response_lens: tuple[int, ...]

    @property
    def length(self) -> int:
        return self.prompt_len + sum(self.response_lens)

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True, slots=True, eq=False)
class SharedPromptLayout:
    """Host spans plus per-token ids of one packed row of T tokens.

    `cache` holds derived index tensors and masks that kernels build lazily (keyed by kernel
    name and device); it is per layout object, so it lives exactly as long as the micro-batch.
    """

    seq_len: int
    groups: tuple[GroupSpan, ...]
    group_ids_T: torch.Tensor
    segment_ids_T: torch.Tensor
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def from_spans(groups: tuple[GroupSpan, ...], seq_len: int,
                   device: torch.device | str = "cpu") -> "SharedPromptLayout":
        _check_spans(groups, seq_len)
        group_ids_T = torch.full((seq_len,), PAD, dtype=torch.int32)
        segment_ids_T = torch.full((seq_len,), PAD, dtype=torch.int32)
        for g, span in enumerate(groups):
            group_ids_T[span.start:span.end] = g
            segment_ids_T[span.start:span.start + span.prompt_len] = PROMPT
            offset = span.start + span.prompt_len
            for k, r_len in enumerate(span.response_lens, start=1):
                segment_ids_T[offset:offset + r_len] = k
                offset += r_len
        return SharedPromptLayout(seq_len, groups, group_ids_T.to(device), segment_ids_T.to(device))

    @property
    def device(self) -> torch.device:
        return self.group_ids_T.device

    @property
    def num_real_tokens(self) -> int:
        return self.groups[-1].end if self.groups else 0

    @property
    def key(self) -> tuple:
        """Hashable description of the layout (for caches that outlive one layout object)."""
        return (self.seq_len, self.groups)

    def to(self, device: torch.device | str) -> "SharedPromptLayout":
        """This layout on `device`; the copy is kept, so per-layer calls move the ids only once."""
        if torch.device(device) == self.device:
            return self
        key = ("moved_to", str(device))
        if key not in self.cache:
            self.cache[key] = SharedPromptLayout(self.seq_len, self.groups, self.group_ids_T.to(device),
                                                 self.segment_ids_T.to(device))
        return self.cache[key]


def _check_spans(groups: tuple[GroupSpan, ...], seq_len: int) -> None:
    expected_start = 0
    for span in groups:
        if span.start != expected_start:
            raise ValueError(f"groups must be contiguous from 0: got start {span.start}, "
                             f"expected {expected_start}")
        if span.prompt_len < 1 or not span.response_lens or min(span.response_lens) < 1:
            raise ValueError(f"every group needs a non-empty prompt and non-empty responses: {span}")
        expected_start = span.end
    if expected_start > seq_len:
        raise ValueError(f"groups cover {expected_start} tokens but the row has {seq_len}")
