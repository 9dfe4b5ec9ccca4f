"""Shared builders for engine-level tests (imported by test modules; not a test file)."""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from engine.config import AlgorithmConfig, ModelConfig, OptimConfig, RewardConfig
from engine.models import frozen_copy, load_causal_lm, load_tokenizer
from engine.precision import Precision, resolve_precision
from engine.rewards.composite import build_rewards
from engine.trainer import Trainer
from engine.trimodel import TriModel, use_shared_prompt_attention
from engine.types import Completion, PromptItem, RolloutGroup


def make_trainer(model_dir, layout="shared", algo=None, optim=None, kl_coef=0.0, dtype="float32",
                 precision: Precision | None = None, norms_in_model_dtype: bool = False,
                 gradient_checkpointing: bool = False, expected_normaliser: int = 1,
                 reward: RewardConfig | None = None, total_iterations: int = 0) -> Trainer:
    """A Trainer on the model of `model_dir`; `dtype` is model.dtype (float32 masters under bf16/fp16), or
    `precision` sets both dtypes directly (the precision benchmark's pure-bf16 contrast).
    `norms_in_model_dtype` swaps in `RMSNormInInputDtype` (see there) before the reference copy is made."""
    precision = precision or resolve_precision(dtype, "cpu")
    model_cfg = ModelConfig(path=str(model_dir), gradient_checkpointing=gradient_checkpointing)
    tokenizer = load_tokenizer(model_dir, model_cfg)
    actor = load_causal_lm(model_dir, model_cfg, torch.device("cpu"), dtype=precision.master)
    if norms_in_model_dtype:
        norms_in_input_dtype(actor)
    if layout == "shared":
        use_shared_prompt_attention(actor, "portable")
    algo = algo or AlgorithmConfig(kl_coef=kl_coef)
    reference = frozen_copy(actor, precision.compute) if algo.kl_coef > 0 else None
    trimodel = TriModel(actor, reference, build_rewards(reward or RewardConfig()),
                        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                        temperature=1.0, layout=layout, pad_id=tokenizer.pad_token_id, precision=precision)
    return Trainer(trimodel, algo, optim or OptimConfig(lr=1e-3), torch.device("cpu"),
                   expected_normaliser=expected_normaliser, total_iterations=total_iterations)


def random_groups(n_groups: int, group_size: int, vocab: int, seed: int = 0, version: int = 0) -> list[RolloutGroup]:
    """Groups with random prompts/completions of varied lengths and random 0/1 rewards."""
    g = torch.Generator().manual_seed(seed)
    groups = []
    for b in range(n_groups):
        P = int(torch.randint(3, 12, (1,), generator=g))
        prompt = PromptItem(index=b, prompt_ids=torch.randint(1, vocab, (P,), generator=g).tolist(), reference="1")
        completions = []
        for _ in range(group_size):
            R = int(torch.randint(1, 9, (1,), generator=g))
            completions.append(Completion(torch.randint(1, vocab, (R,), generator=g).tolist(), [0.0] * R, True))
        group = RolloutGroup(prompt, completions, version)
        group.rewards_G = torch.randint(0, 2, (group_size,), generator=g).float()
        group.extracted = [True] * group_size
        groups.append(group)
    return groups


def params_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.trimodel.actor.named_parameters()}


def grads_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in trainer.trimodel.actor.named_parameters()}


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item() for k in a)


# ---- plain references for the trainer's gradients ----

def response_logprobs(actor: nn.Module, prompt_ids: list[int], token_ids: list[int]) -> torch.Tensor:
    """float64 (R,): log-probs of a response's tokens, from one plain forward of prompt + response (no
    packing, no shared-prompt attention)."""
    logits = actor(input_ids=torch.tensor([prompt_ids + token_ids])).logits[0].double()
    P = len(prompt_ids)
    return torch.log_softmax(logits[P - 1:-1], dim=-1).gather(1, torch.tensor(token_ids)[:, None])[:, 0]


def gradients(actor: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """d loss / d parameter, by name, without touching the parameters' .grad."""
    names, params = zip(*actor.named_parameters())
    return dict(zip(names, torch.autograd.grad(loss, params)))


# ---- exactness bounds of the parity tests (tests/parity/) ----

# float64 parity: > 3e3 x the float64 round-off the parity tests measure (at most 3e-14), and ~1e3 x below
# float32's eps (1.2e-7), so a step that silently runs in float32 (a `.float()`, a float32 norm) fails it.
EXACT_RTOL = 1e-10


def roundoff_bound(dtype: torch.dtype, n_terms: int, factor: float = 16.0) -> float:
    """Relative tolerance for two computations of the same values in `dtype` that differ only in the order
    of their sums (relative error = max |a - b| / max |b| per tensor): factor * eps(dtype) * sqrt(n_terms).

    The rounding errors of a sum of n terms add like a random walk, ~eps * sqrt(n) of the terms' magnitude
    (eps * n is the worst case, which these sums do not approach). `n_terms` is the longest sum feeding the
    compared values: the tokens of a batch for a weight gradient, the keys of a softmax row, the hidden size
    for a logit. `factor` covers the few ulps each further op adds and their growth through two decoder
    layers: the parity tests measured at most 1.4 * eps * sqrt(n) in float32, so 16 leaves ~10x margin for
    other CPUs' kernels and stays far below what a wrong mask or a lost term gives (> 1e-3).
    """
    return factor * torch.finfo(dtype).eps * math.sqrt(n_terms)


class RMSNormInInputDtype(nn.Module):
    """transformers' Qwen2/Llama RMSNorm computed in its input's dtype.

    transformers computes RMSNorm in float32 whatever the input dtype (`hidden_states.to(torch.float32)` in
    Qwen2RMSNorm.forward, likewise LlamaRMSNorm), so a float64 model rounds every residual-stream value and
    gradient to float32 there: float64 parity would stop at ~1e-7. Same formula, same weight Parameter (an
    optimizer that holds it keeps updating it)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight = norm.weight
        self.variance_epsilon = norm.variance_epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def norms_in_input_dtype(model: nn.Module) -> nn.Module:
    """Replace every transformers `*RMSNorm` submodule of `model` by `RMSNormInInputDtype`, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__.endswith("RMSNorm"):
                setattr(parent, name, RMSNormInInputDtype(child))
    return model


class ScriptedEnvironment:
    """A two-turn environment for runs of any model: the first turn, whatever it says, gets one tool result
    ("7") back as its observation; the second ends the episode with a reward part `bonus` of 0.5."""

    BONUS = 0.5

    def __init__(self, prompt_text: str, reference: str) -> None:
        self.turns = 0

    def step(self, turn: str):
        from engine.envs.base import EpisodeEnd, Observation

        self.turns += 1
        if self.turns == 1:
            return Observation(text="7", tool_calls=1)
        return EpisodeEnd(reward_parts={"bonus": self.BONUS})


class ScriptedEnv:
    """For the multi-turn engines' tests: answers `turns - 1` observations of growing length ("r", "rrrr", ...),
    one tool call each, then ends the episode with a reward part `bonus` of 0.5; each step takes `delay_s`."""

    def __init__(self, prompt_text: str, reference: str, turns: int = 3, delay_s: float = 0.0):
        self.turns_left, self.delay_s, self.calls = turns - 1, delay_s, 0

    def step(self, turn: str):
        from engine.envs.base import EpisodeEnd, Observation

        time.sleep(self.delay_s)
        if self.turns_left == 0:
            return EpisodeEnd({"bonus": 0.5})
        self.turns_left -= 1
        self.calls += 1
        return Observation(text="r" * (1 + 3 * self.calls), tool_calls=1)
