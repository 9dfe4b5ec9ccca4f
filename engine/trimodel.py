"""The unified tri-model: actor (trained), reference (frozen, absent when kl_coef == 0) and reward.

`TriModel.score` turns completions into rewards (weighted reward functions by import path, optionally a reward
model run on the same packed layout as the actor; engine/rewards/composite.py); `TriModel.forward` runs the
actor (with grad) and the reference (without) on one packed micro-batch and returns per-token log-probs of
the response tokens. With one optimizer step per iteration the old-policy log-probs are the actor's own,
detached, so no extra forward pass is made (the PPO ratio is 1 in value, its gradient is the policy gradient).

Token layout: a micro-batch's N response tokens are flat, in (group, response, token) order; `seq_N` maps
each to its sequence. U is the number of distinct positions whose logits predict them (engine/packing.py).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from engine.algorithms import entropy_from_logits
from engine.algorithms.overlong import overlong_penalty
from engine.packing import PackedBatch, pack_expanded, pack_groups
from engine.precision import Precision
from engine.rewards import RewardResult
from engine.rewards.composite import Rewards
from engine.types import Completion, RolloutGroup
from kernels.shared_prompt_attention import register_with_transformers


@dataclass(slots=True)
class TokenLogprobs:
    """Per response token of a micro-batch: actor log-probs (grad), reference log-probs, entropy."""

    logp_N: torch.Tensor  # actor, differentiable
    ref_logp_N: torch.Tensor | None  # reference, no grad; None without a reference model
    entropy_N: torch.Tensor  # actor's, detached
    rollout_logp_N: torch.Tensor  # what the rollout engine reported, for the on-policy check
    seq_N: torch.Tensor  # long: index of the sequence (group-major: b * G + k) each token belongs to
    finished_N: torch.Tensor  # bool: the token's sequence ended on a stop condition (not on max_new_tokens)


class TriModel:
    def __init__(self, actor: torch.nn.Module, reference: torch.nn.Module | None, rewards: Rewards,
                 decode: Callable[[list[int]], str], temperature: float, layout: str, pad_id: int,
                 precision: Precision, overlong: "OverlongPenalty | None" = None):
        self.actor = actor
        self.reference = reference
        self.rewards = rewards
        self.decode = decode
        # Log-probs are of the distribution that was sampled from: logits / temperature (greedy counts as 1).
        self.temperature = temperature if temperature > 0 else 1.0
        self.layout = layout
        self.pad_id = pad_id
        self.precision = precision
        self.overlong = overlong

    @property
    def reward_fn(self) -> Callable[..., RewardResult]:
        """The correctness function alone, `(completion, reference, prompt="") -> RewardResult` (held-out eval)."""
        return self.rewards.functions.correctness

    def score(self, group: RolloutGroup) -> None:
        """Decode the group's completions and fill its scores (correctness function), rewards (weighted functions,
        + reward model, + the environments' reward parts, + overlong penalty), answer-extracted flags and reward timeout and crash counts."""
        group.texts = [self.decode(c.token_ids) for c in group.completions]
        scored = self.rewards.functions.score_group(group.texts, group.prompt.reference, group.prompt.text)
        rewards_G = scored.weighted_G
        reward_model = self.rewards.model
        if reward_model is not None:  # on the actor's packed layout: the prompt once for its G responses
            items = [(group.prompt.prompt_ids, [c.token_ids for c in group.completions])]
            model_G = reward_model.score(self._pack([group]), items).to("cpu", rewards_G.dtype)
            rewards_G = rewards_G + reward_model.weight * model_G
        if any(c.episode is not None and c.episode.reward_parts for c in group.completions):
            rewards_G = rewards_G + environment_rewards_G(group.completions).to(rewards_G.dtype)
        if self.overlong is not None:
            lengths_G = torch.tensor([len(c.token_ids) for c in group.completions])
            rewards_G = rewards_G + overlong_penalty(lengths_G, *self.overlong)
        group.scores_G, group.rewards_G = scored.correct_G, rewards_G
        group.extracted = scored.extracted
        group.reward_timeouts, group.reward_crashes = scored.timeouts, scored.crashes

    def close(self) -> None:
        """Stop the processes the tri-model started (the reward functions' worker); the run is over."""
        self.rewards.close()

    def forward(self, groups: Sequence[RolloutGroup], device: torch.device) -> TokenLogprobs:
        """Actor and reference log-probs of every response token of `groups`, packed in one layout. Under mixed
        precision the caller runs this and the backward inside `precision.in_compute_dtype` (Trainer.accumulate)."""
        packed = self._pack(groups).to(device)
        loss_dtype = self.precision.loss_dtype
        logits_UV = head_logits(self.actor, packed).to(loss_dtype) / self.temperature
        logp_N = torch.log_softmax(logits_UV, dim=-1)[packed.target_rows, packed.target_ids]
        entropy_N = entropy_from_logits(logits_UV.detach())[packed.target_rows]
        ref_logp_N = None
        if self.reference is not None:
            with torch.no_grad():
                ref_logits_UV = head_logits(self.reference, packed).to(loss_dtype) / self.temperature
                ref_logp_N = torch.log_softmax(ref_logits_UV, dim=-1)[packed.target_rows, packed.target_ids]
        lengths = torch.tensor([r for lens in packed.response_lens for r in lens], device=device)
        seq_N = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
        finished = torch.tensor([c.finished for g in groups for c in g.completions], device=device)
        rollout_logp_N = torch.tensor([lp for g in groups for c in g.completions for lp in c.logprobs],
                                      dtype=loss_dtype, device=device)
        out = TokenLogprobs(logp_N, ref_logp_N, entropy_N, rollout_logp_N, seq_N, finished[seq_N])
        return _sampled_tokens_only(out, groups)

    def _pack(self, groups: Sequence[RolloutGroup]) -> PackedBatch:
        items = [(g.prompt.prompt_ids, [c.token_ids for c in g.completions]) for g in groups]
        if self.layout == "shared":
            return pack_groups(items, pad_id=self.pad_id)
        return pack_expanded(items, pad_id=self.pad_id)


def environment_rewards_G(completions: Sequence[Completion]) -> torch.Tensor:
    """r_env[g] = sum of the reward parts trajectory g's environment ended with (0 for none, or single-turn):
    they add to the recipe's weighted reward functions unweighted, as the environment chose their scale."""
    return torch.tensor([sum(v for _, v in c.episode.reward_parts) if c.episode else 0.0 for c in completions],
                        dtype=torch.float64)


def _sampled_tokens_only(out: TokenLogprobs, groups: Sequence[RolloutGroup]) -> TokenLogprobs:
    """Drop the environment's tokens (multi-turn observations) from every per-token tensor.

    They stay in the packed input (later turns attend to them) but are not the policy's actions: selecting the
    sampled tokens here, before any loss, makes every loss, KL, entropy, importance ratio, sequence length and
    aggregation count the model's tokens alone, and the observations' logits receive exactly zero gradient.
    """
    if all(c.sampled is None for g in groups for c in g.completions):
        return out
    flags = [s for g in groups for c in g.completions for s in (c.sampled or [True] * len(c.token_ids))]
    keep_N = torch.tensor(flags, device=out.logp_N.device)
    fields = (out.logp_N, out.ref_logp_N, out.entropy_N, out.rollout_logp_N, out.seq_N, out.finished_N)
    return TokenLogprobs(*(None if x is None else x[keep_N] for x in fields))


OverlongPenalty = tuple[int, int, float]  # (max_new_tokens, overlong_buffer, overlong_penalty)


def head_logits(model: torch.nn.Module, packed: PackedBatch) -> torch.Tensor:
    """logits_UV at the U positions that predict response tokens, computed by the model's own forward
    (`logits_to_keep` makes its LM head and any final-logit transform run only at those positions).

    Shared layout: one row, so the flat positions are the row's positions. Expanded layout: the positions of
    any row (columns C), then the [rows, C] grid is indexed at each flat position.
    """
    rows, T = packed.input_ids.shape
    if rows == 1:
        out = model(**packed.model_kwargs(), logits_to_keep=packed.logit_positions)
        return out.logits[0]
    cols_C, col_U = torch.unique(packed.logit_positions % T, return_inverse=True)
    out = model(**packed.model_kwargs(), logits_to_keep=cols_C)
    return out.logits[packed.logit_positions // T, col_U]


def use_shared_prompt_attention(model: torch.nn.Module, kernel: str) -> None:
    """Route the model's attention through the backend's shared-prompt kernel (AttentionInterface).

    Without a packed layout in the forward kwargs the kernel is plain causal SDPA, so the same module
    still generates with a KV cache and runs the expanded layout.
    """
    model.set_attn_implementation(register_with_transformers(kernel))
