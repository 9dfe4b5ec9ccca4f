from __future__ import annotations

import pytest
import torch

from engine.trainer import OffPolicyGroupError
from helpers import make_trainer, random_groups


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
