"""Shared builders for engine-level tests (imported by test modules; not a test file)."""
from __future__ import annotations

import torch

from engine.config import AlgorithmConfig, ModelConfig, OptimConfig
from engine.models import frozen_copy, load_causal_lm, load_tokenizer
from engine.precision import Precision, resolve_precision
from engine.rewards import load_reward_fn
from engine.trainer import Trainer
from engine.trimodel import TriModel, use_shared_prompt_attention
from engine.types import Completion, PromptItem, RolloutGroup


def make_trainer(model_dir, layout="shared", algo=None, optim=None, kl_coef=0.0, dtype="float32",
                 precision: Precision | None = None) -> Trainer:
    """A Trainer on the model of `model_dir`; `dtype` is model.dtype (float32 masters under bf16/fp16), or
    `precision` sets both dtypes directly (the precision benchmark's pure-bf16 contrast)."""
    precision = precision or resolve_precision(dtype, "cpu")
    tokenizer = load_tokenizer(model_dir, ModelConfig(path=str(model_dir)))
    actor = load_causal_lm(model_dir, ModelConfig(path=str(model_dir)), torch.device("cpu"), dtype=precision.master)
    if layout == "shared":
        use_shared_prompt_attention(actor, "portable")
    algo = algo or AlgorithmConfig(kl_coef=kl_coef)
    reference = frozen_copy(actor, precision.compute) if algo.kl_coef > 0 else None
    trimodel = TriModel(actor, reference, load_reward_fn("engine.rewards.gsm8k:gsm8k_reward"),
                        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                        temperature=1.0, layout=layout, pad_id=tokenizer.pad_token_id, precision=precision)
    return Trainer(trimodel, algo, optim or OptimConfig(lr=1e-3), torch.device("cpu"))


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


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item() for k in a)
