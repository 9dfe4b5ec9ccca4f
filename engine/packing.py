"""Pack GRPO groups (one prompt, G responses) into model inputs, and read log-probs back out.

Two layouts with one API (docs/packing.md has the diagrams):

* `pack_groups` (shared prompt): every group of the micro-batch is laid out back to back in ONE
  row, `[p | r_1 | ... | r_G][p' | r'_1 | ...] pad`, positions restart at P for each response,
  and a `SharedPromptLayout` tells the attention kernel who sees whom. The prompt is computed
  once instead of G times.
* `pack_expanded` (plain): one right-padded row per (prompt, response) pair with ordinary
  positions and causal attention; usable with any attention implementation. Right padding
  sits after every real token, so causal attention never lets a real token see a pad and no
  attention_mask is passed (which keeps SDPA on its `is_causal` fast path).

Why one concatenated row rather than one row per group: the linear layers are most of the
FLOPs, and one row has no padding waste however unequal the groups are; it is also the natural
input of varlen kernels (FlexAttention document masks, Ascend TND) and lets `logits_to_keep`
take the flat positions directly. The price is T = sum of group lengths per micro-batch:
size micro-batches by tokens, not by groups.

Log-probs: response k's first token r_k[0] is predicted by the logits at the LAST PROMPT
position, which all G responses share; r_k[j] (j > 0) by the logits at r_k[j-1]. So the
needed positions are `logit_positions` (unique, U of them), and each of the N response
tokens reads row `target_rows[n]` of the selected logits at column `target_ids[n]`. The
log-softmax is computed once per position; the shared last-prompt row receives the summed
gradient of its G targets.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.shared_prompt_attention import LAYOUT_KWARG, GroupSpan, SharedPromptLayout

Group = tuple[list[int], list[list[int]]]  # (prompt_ids, [response_ids, ...])


@dataclass(frozen=True, slots=True, eq=False)
class PackedBatch:
    """Model inputs of one micro-batch plus the index maps back to (group, response, token).

    input_ids / position_ids: [rows, T] (rows == 1 for the shared layout).
    layout: the shared-prompt layout, or None for the plain causal (expanded) layout.
    logit_positions: [U] flat positions into rows * T whose logits are needed.
    target_rows: [N] for each response token (canonical order: group, response, token), the
        index into logit_positions of the position that predicts it.
    target_ids: [N] the response tokens themselves.
    response_lens: response_lens[b][k] is R_k of group b; N == sum of all of them.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    layout: SharedPromptLayout | None
    logit_positions: torch.Tensor
    target_rows: torch.Tensor
    target_ids: torch.Tensor
    response_lens: tuple[tuple[int, ...], ...]

    @property
    def num_response_tokens(self) -> int:
        return self.target_ids.numel()

    def model_kwargs(self) -> dict:
        """Forward kwargs for a transformers causal LM: `model(**packed.model_kwargs())`."""
        kwargs = {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False}
        if self.layout is not None:
            kwargs[LAYOUT_KWARG] = self.layout
        return kwargs

    def to(self, device: torch.device | str) -> "PackedBatch":
        return PackedBatch(self.input_ids.to(device), self.position_ids.to(device),
                           None if self.layout is None else self.layout.to(device),
                           self.logit_positions.to(device), self.target_rows.to(device),
                           self.target_ids.to(device), self.response_lens)


def pack_groups(groups: list[Group], pad_id: int, *, pad_to_multiple_of: int = 1) -> PackedBatch:
    """Shared-prompt layout: all groups in one row, each prompt stored once.

    Trailing padding up to a multiple of `pad_to_multiple_of` bounds the number of distinct
    shapes (useful for compiled kernels); pad tokens are never attended to and never read.
    """
    _validate(groups)
    ids: list[int] = []
    positions: list[int] = []
    spans: list[GroupSpan] = []
    logit_positions: list[int] = []
    target_rows: list[int] = []
    for prompt, responses in groups:
        start, P = len(ids), len(prompt)
        spans.append(GroupSpan(start, P, tuple(len(r) for r in responses)))
        ids += prompt
        positions += range(P)
        shared_row = len(logit_positions)
        logit_positions.append(start + P - 1)  # last prompt token predicts every r_k[0]
        for response in responses:
            first = len(ids)
            target_rows.append(shared_row)
            target_rows += range(len(logit_positions), len(logit_positions) + len(response) - 1)
            logit_positions += range(first, first + len(response) - 1)
            ids += response
            positions += range(P, P + len(response))
    T = _round_up(len(ids), pad_to_multiple_of)
    ids += [pad_id] * (T - len(ids))
    positions += [0] * (T - len(positions))
    layout = SharedPromptLayout.from_spans(tuple(spans), T)
    return PackedBatch(torch.tensor([ids]), torch.tensor([positions]), layout,
                       torch.tensor(logit_positions), torch.tensor(target_rows),
                       _targets(groups), _response_lens(groups))


def pack_expanded(groups: list[Group], pad_id: int) -> PackedBatch:
    """Plain layout: one right-padded row [prompt | r_k] per response, ordinary causal attention."""
    _validate(groups)
    rows = [(prompt, response) for prompt, responses in groups for response in responses]
    L = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), L), dtype=torch.long)
    logit_positions: list[int] = []
    for i, (prompt, response) in enumerate(rows):
        n = len(prompt) + len(response)
        input_ids[i, :n] = torch.tensor(prompt + response)
        position_ids[i, :n] = torch.arange(n)
        logit_positions += range(i * L + len(prompt) - 1, i * L + n - 1)
    U = len(logit_positions)
    return PackedBatch(input_ids, position_ids, None, torch.tensor(logit_positions),
                       torch.arange(U), _targets(groups), _response_lens(groups))


def select_logit_positions(x_rows_T: torch.Tensor, packed: PackedBatch) -> torch.Tensor:
    """[rows, T, ...] (hidden states or logits) -> [U, ...] at the positions whose logits are needed.

    Applying the LM head after this selection avoids computing logits for prompt tokens.
    """
    return x_rows_T.flatten(0, 1).index_select(0, packed.logit_positions)


def response_token_logprobs(logits: torch.Tensor, packed: PackedBatch) -> torch.Tensor:
    """log p(response token) for all N response tokens, flat in canonical order -> [N] float32, or
    float64 for float64 logits.

    `logits` is either the full [rows, T, V] model output or the [U, V] logits of
    `select_logit_positions`. The log-softmax runs in float32 (float64 for float64 logits) once per needed
    position.
    """
    logits_UV = logits if logits.dim() == 2 else select_logit_positions(logits, packed)
    logp_UV = torch.log_softmax(logits_UV, dim=-1, dtype=torch.promote_types(logits_UV.dtype, torch.float32))
    return logp_UV[packed.target_rows, packed.target_ids]


def response_logprobs(model, packed: PackedBatch) -> torch.Tensor:
    """[N] response-token log-probs of a transformers causal LM, LM head only where needed.

    Runs the decoder, keeps the U needed hidden states, then applies the output embedding:
    no logits for prompt tokens and no [T, V] tensor. Models that post-process logits (e.g.
    final soft-capping) need their own head step instead.
    """
    hidden_rows_T_d = model.get_decoder()(**packed.model_kwargs()).last_hidden_state
    logits_UV = model.get_output_embeddings()(select_logit_positions(hidden_rows_T_d, packed))
    return response_token_logprobs(logits_UV, packed)


def split_by_response(values_N: torch.Tensor, packed: PackedBatch) -> list[list[torch.Tensor]]:
    """Flat per-token values [N] -> values[b][k] of shape [R_k] for group b, response k."""
    flat = values_N.split([r for lens in packed.response_lens for r in lens])
    out, i = [], 0
    for lens in packed.response_lens:
        out.append(list(flat[i:i + len(lens)]))
        i += len(lens)
    return out


def gather_response_logprobs(logits: torch.Tensor, packed: PackedBatch) -> list[list[torch.Tensor]]:
    """logp[b][k]: [R_k] log-probs of group b's response k (see `response_token_logprobs`)."""
    return split_by_response(response_token_logprobs(logits, packed), packed)


def _validate(groups: list[Group]) -> None:
    if not groups:
        raise ValueError("no groups to pack")
    for b, (prompt, responses) in enumerate(groups):
        if not prompt:
            raise ValueError(f"group {b}: empty prompt (the first response token needs a prompt token)")
        if not responses or any(len(r) == 0 for r in responses):
            raise ValueError(f"group {b}: every group needs at least one non-empty response")


def _targets(groups: list[Group]) -> torch.Tensor:
    return torch.tensor([t for _, responses in groups for r in responses for t in r], dtype=torch.long)


def _response_lens(groups: list[Group]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(len(r) for r in responses) for _, responses in groups)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
