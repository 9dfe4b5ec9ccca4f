"""A reward model: a Hugging Face `*ForSequenceClassification` folder, scored on the actor's packed layout.

What such a model computes for one plain sequence s = prompt + response (transformers'
`GenericForSequenceClassification.forward`, one unpadded row):

    h_Sd  = base_model(s).last_hidden_state          # [len(s), d], the final norm included
    score = score_head(h_Sd[last])[0]                 # last = the last token of s whose id != config.pad_token_id

Here the base model runs once per micro-batch on the packed row the actor trains on (engine/packing.py): with
the shared-prompt layout each prompt is computed once for its G responses, and the shared-prompt attention
kernel makes every response token see exactly its prompt and its own earlier tokens, at the positions it would
have in s. So h at the packed position of `last` IS h_Sd[last] (up to summation order), and the head is
applied only at those B * G positions. tests/rewards/test_reward_model.py checks packed == plain in float64.

`last` follows transformers' rule: a response ending in the model's pad id (eos == pad, as in Qwen2.5 base
models) is read at the token before it, exactly as the plain forward reads it.

Requirements, each checked at load with a one-line error: the folder's `config.architectures` is a
`*ForSequenceClassification` (a causal-LM folder would get a randomly initialised head), one label, a `score`
head on a decoder base model (Qwen2, Llama, Mistral, Gemma, ... share `GenericForSequenceClassification`; BERT-
style `classifier` heads are not supported), and the actor's tokenizer: token ids are fed as the actor produced
them, so every actor token must have the same id in the reward model's vocabulary (compared when the folder has
a tokenizer; else its vocabulary must at least be as large). The model is frozen, in eval mode and in the
compute dtype; its scores are returned in float32 (float64 for a float64 model).

Not supported: remote code (`trust_remote_code`), multi-label or multi-objective heads, models whose head is
not called `score`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config import ConfigError
from engine.packing import Group, PackedBatch
from kernels.shared_prompt_attention import register_with_transformers

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # a folder with one of them has a tokenizer


@dataclass(eq=False)
class RewardModel:
    """A loaded reward model and its weight in the reward sum."""

    model: torch.nn.Module  # a *ForSequenceClassification, frozen, eval mode, shared-prompt attention set
    weight: float
    pad_token_id: int | None  # the reward model's own: a trailing token with this id is not the scored one

    @torch.no_grad()
    def score(self, packed: PackedBatch, groups: Sequence[Group]) -> torch.Tensor:
        """[S] one score per response of `groups` (canonical order: group, response), computed on `packed` (the
        groups packed by pack_groups or pack_expanded); float32, or float64 for a float64 model."""
        device = next(self.model.parameters()).device
        positions_S = last_token_positions(packed, groups, self.pad_token_id).to(device)
        base = getattr(self.model, self.model.base_model_prefix)
        hidden_rows_T_d = base(**packed.to(device).model_kwargs()).last_hidden_state
        scores_S = self.model.score(hidden_rows_T_d.flatten(0, 1)[positions_S])[:, 0]
        return scores_S.to(torch.promote_types(scores_S.dtype, torch.float32))


def last_token_positions(packed: PackedBatch, groups: Sequence[Group], pad_id: int | None) -> torch.Tensor:
    """long [S]: for each (prompt + response) of `groups`, the flat position (into rows * T of `packed`) of the
    token a sequence classifier reads: its last token whose id is not `pad_id` (transformers' rule)."""
    T = packed.input_ids.shape[1]
    positions: list[int] = []
    for b, (prompt, responses) in enumerate(groups):
        P = len(prompt)
        if packed.layout is not None:  # shared: [prompt | r_1 | r_2 ...] from the group's span start
            prompt_at = packed.layout.groups[b].start
            response_at = prompt_at + P
        for response in responses:
            if packed.layout is None:  # expanded: one row [prompt | r_k] per response
                prompt_at = len(positions) * T
                response_at = prompt_at + P
            j = _last_kept(prompt, response, pad_id)
            positions.append(prompt_at + j if j < P else response_at + j - P)
            response_at += len(response)  # shared: where the next response starts (expanded: reset above)
    return torch.tensor(positions, dtype=torch.long)


def _last_kept(prompt: list[int], response: list[int], pad_id: int | None) -> int:
    """Index in prompt + response of its last token != pad_id; 0 when all are pad (transformers' argmax of 0s)."""
    sequence = prompt + response
    if pad_id is None:
        return len(sequence) - 1
    return next((j for j in range(len(sequence) - 1, -1, -1) if sequence[j] != pad_id), 0)


def load_reward_model(folder: str, weight: float, device: torch.device, dtype: torch.dtype, attention_kernel: str,
                      tokenizer=None) -> RewardModel:
    """The reward model of `folder`, checked (see the module docstring), frozen and on `device` in `dtype`, with
    its attention routed through the shared-prompt kernel `attention_kernel` (plain SDPA without a layout)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    where = f"reward.model: {folder}"
    if not Path(folder).is_dir():
        raise ConfigError(f"{where}: not a folder (a local Hugging Face *ForSequenceClassification folder)")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    architectures = config.architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ConfigError(f"{where}: config.architectures is {architectures}; a reward model is a "
                          f"*ForSequenceClassification (a causal LM would get an untrained score head)")
    if config.num_labels != 1:
        raise ConfigError(f"{where}: has {config.num_labels} labels; a reward model has one (num_labels=1)")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder, config=config, dtype=dtype,
                                                                   local_files_only=True, attn_implementation="sdpa")
    except ValueError as exc:  # transformers has no sequence-classification class for this config
        raise ConfigError(f"{where}: cannot load as a sequence classifier: {exc}".replace("\n", " ")) from exc
    if not isinstance(getattr(model, "score", None), torch.nn.Module) or not hasattr(model, model.base_model_prefix):
        raise ConfigError(f"{where}: {type(model).__name__} has no `score` head on a base model; this model "
                          f"family is unsupported as a reward model")
    _check_vocabulary(where, folder, config.get_text_config().vocab_size, tokenizer)
    model.set_attn_implementation(register_with_transformers(attention_kernel))
    model.eval().requires_grad_(False)
    return RewardModel(model.to(device), weight, config.get_text_config().pad_token_id)


def _check_vocabulary(where: str, folder: str, vocab_size: int, tokenizer) -> None:
    """The reward model reads the actor's token ids: each actor token must mean the same to it."""
    if tokenizer is None:
        return
    from transformers import AutoTokenizer

    own = None
    if any((Path(folder) / name).is_file() for name in _TOKENIZER_FILES):  # else only the size can be checked
        own = AutoTokenizer.from_pretrained(folder, local_files_only=True).get_vocab()
    if own is not None:
        differ = sum(own.get(token) != i for token, i in tokenizer.get_vocab().items())
        if differ:
            raise ConfigError(f"{where}: its tokenizer gives {differ} of the actor's tokens other ids; a reward "
                              f"model scores the actor's token ids, so it needs the actor's tokenizer")
    elif vocab_size < len(tokenizer):
        raise ConfigError(f"{where}: its vocabulary ({vocab_size}) is smaller than the actor tokenizer's "
                          f"({len(tokenizer)}); a reward model scores the actor's token ids")
