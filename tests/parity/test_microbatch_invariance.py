"""Changing the micro-batch size (or the layout) must not change the update beyond float round-off."""
from __future__ import annotations

import pytest

from engine.config import AlgorithmConfig
from engine.controller import micro_batches
from helpers import make_trainer, max_rel_diff, params_of, random_groups


def _gradients(model_dir, micro_batch_size: int, layout="shared", algo=None, steps_before: int = 1):
    """The iteration's final gradients, after `steps_before` optimizer steps on identical data."""
    trainer = make_trainer(model_dir, layout=layout, algo=algo)
    vocab = trainer.trimodel.actor.config.vocab_size
    for step in range(steps_before + 1):
        for batch in micro_batches(random_groups(6, 4, vocab, seed=step, version=trainer.version), micro_batch_size):
            trainer.accumulate(batch)
        if step < steps_before:
            trainer.step()
    trainer.finalize_gradients()
    return {n: p.grad.clone() for n, p in trainer.trimodel.actor.named_parameters()}


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_micro_batch_size_does_not_change_the_update(tiny_model_dir, aggregation):
    algo = AlgorithmConfig(loss_aggregation=aggregation, kl_coef=0.05)
    whole = _gradients(tiny_model_dir, micro_batch_size=1000, algo=algo)
    for size in (1, 8):
        assert max_rel_diff(_gradients(tiny_model_dir, size, algo=algo), whole) < 1e-5


def test_shared_and_expanded_layouts_give_the_same_update(tiny_model_dir):
    # From the same weights (no earlier step: Adam's first step turns round-off-sized gradient differences
    # of near-zero entries into lr-sized weight differences, which is not a layout difference).
    shared = _gradients(tiny_model_dir, 8, layout="shared", steps_before=0)
    expanded = _gradients(tiny_model_dir, 8, layout="expanded", steps_before=0)
    assert max_rel_diff(shared, expanded) < 1e-5


def test_the_step_actually_moves_the_weights(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir)
    before = params_of(trainer)
    trainer.accumulate(random_groups(2, 4, trainer.trimodel.actor.config.vocab_size))
    trainer.step()
    assert max_rel_diff(params_of(trainer), before) > 1e-4
