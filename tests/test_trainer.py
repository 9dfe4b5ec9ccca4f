from __future__ import annotations

import pytest
import torch

from engine.config import AlgorithmConfig, OptimConfig
from engine.trainer import OffPolicyGroupError
from helpers import EXACT_RTOL, gradients, grads_of, make_trainer, max_rel_diff, random_groups, response_logprobs


def test_a_group_from_another_policy_version_is_refused(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir)
    vocab = trainer.trimodel.actor.config.vocab_size
    with pytest.raises(OffPolicyGroupError, match="version 1, but the trainer is at version 0"):
        trainer.accumulate(random_groups(1, 2, vocab, version=1))


def test_one_step_per_iteration_bumps_the_version_and_reports_metrics(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir, kl_coef=0.1)
    vocab = trainer.trimodel.actor.config.vocab_size
    trainer.accumulate(random_groups(2, 4, vocab))
    metrics = trainer.step()
    assert trainer.version == 1
    assert metrics["policy/kl"] == pytest.approx(0.0, abs=1e-6)  # actor == reference before the first step
    assert metrics["optim/grad_norm"] > 0 and metrics["policy/clip_frac"] == 0.0  # on-policy: ratio is 1
    assert all(p.grad is None for p in trainer.trimodel.actor.parameters())


def test_step_without_accumulated_groups_is_an_error(tiny_model_dir):
    with pytest.raises(RuntimeError, match="before any group"):
        make_trainer(tiny_model_dir).step()


def test_no_reference_model_is_loaded_when_kl_coef_is_zero(tiny_model_dir):
    assert make_trainer(tiny_model_dir, kl_coef=0.0).trimodel.reference is None
    reference = make_trainer(tiny_model_dir, kl_coef=0.01).trimodel.reference
    assert reference is not None and not any(p.requires_grad for p in reference.parameters())


def _plain_policy_gradient_loss(actor, groups, aggregation: str) -> torch.Tensor:
    """On-policy GRPO written plainly (ratio 1: loss_t = -A_i * logp_t), one forward per response:
    token_mean = sum_i sum_t loss_t / sum_i |y_i|;  seq_mean = sum_i (1/|y_i|) sum_t loss_t / (sequences)."""
    sums, lengths = [], []
    for group in groups:
        for completion, adv in zip(group.completions, group.advantages_G):
            sums.append(-adv * response_logprobs(actor, group.prompt.prompt_ids, completion.token_ids).sum())
            lengths.append(len(completion.token_ids))
    if aggregation == "token_mean":
        return torch.stack(sums).sum() / sum(lengths)
    return (torch.stack(sums) / torch.tensor(lengths, dtype=torch.float64)).mean()


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_loss_aggregation_weighs_tokens_as_its_formula_says(tiny_model_dir, aggregation):
    """algorithm.loss_aggregation over an iteration fed in two micro-batches of ragged responses equals its
    formula over the whole iteration (float64, EXACT_RTOL)."""
    trainer = make_trainer(tiny_model_dir, layout="expanded", algo=AlgorithmConfig(loss_aggregation=aggregation),
                           optim=OptimConfig(grad_clip=0.0), dtype="float64", norms_in_model_dtype=True)
    groups = random_groups(3, 4, trainer.trimodel.actor.config.vocab_size, seed=9)  # responses of 1 to 8 tokens
    advantages = torch.Generator().manual_seed(10)
    for group in groups:
        group.advantages_G = torch.randn(group.group_size, generator=advantages, dtype=torch.float64)
    reference = gradients(trainer.trimodel.actor, _plain_policy_gradient_loss(trainer.trimodel.actor, groups,
                                                                              aggregation))
    for batch in (groups[:1], groups[1:]):
        trainer.accumulate(batch)
    trainer.finalize_gradients()
    assert max_rel_diff(grads_of(trainer), reference) < EXACT_RTOL
