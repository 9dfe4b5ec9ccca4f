"""Changing the micro-batch size (or the layout) must not change the update beyond float round-off.

The claims are checked in float64 (model.dtype=float64: float64 masters, forward, losses; RMSNorm kept in
float64 too, see helpers.RMSNormInInputDtype) against EXACT_RTOL; one float32 test per claim documents the
float32 behaviour with a bound derived from float32's eps (helpers.roundoff_bound).
"""
from __future__ import annotations

import json

import pytest
import torch

from engine.config import AlgorithmConfig
from engine.controller import micro_batches
from helpers import EXACT_RTOL, make_trainer, max_rel_diff, params_of, random_groups, roundoff_bound

N_GROUPS, GROUP_SIZE = 6, 4


def _gradients(model_dir, micro_batch_size: int, layout="shared", algo=None, steps_before: int = 1,
               dtype: str = "float64"):
    """The iteration's final gradients, after `steps_before` optimizer steps on identical data."""
    trainer = make_trainer(model_dir, layout=layout, algo=algo, dtype=dtype,
                           norms_in_model_dtype=dtype == "float64")
    vocab = trainer.trimodel.actor.config.vocab_size
    for step in range(steps_before + 1):
        groups = random_groups(N_GROUPS, GROUP_SIZE, vocab, seed=step, version=trainer.version)
        for batch in micro_batches(groups, micro_batch_size):
            trainer.accumulate(batch)
        if step < steps_before:
            trainer.step()
    trainer.finalize_gradients()
    return {n: p.grad.clone() for n, p in trainer.trimodel.actor.named_parameters()}


def _tokens(model_dir, layout: str) -> int:
    """Tokens the iteration's forward runs on (step 0's groups): the longest sum in a weight gradient."""
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    groups = random_groups(N_GROUPS, GROUP_SIZE, vocab)
    copies = 1 if layout == "shared" else GROUP_SIZE  # expanded: one prompt copy per response
    return sum(copies * len(g.prompt.prompt_ids) + sum(len(c.token_ids) for c in g.completions) for g in groups)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_micro_batch_size_does_not_change_the_update(tiny_model_dir, aggregation):
    algo = AlgorithmConfig(loss_aggregation=aggregation, kl_coef=0.05)
    whole = _gradients(tiny_model_dir, micro_batch_size=1000, algo=algo)
    for size in (1, 8):
        assert max_rel_diff(_gradients(tiny_model_dir, size, algo=algo), whole) < EXACT_RTOL


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_float32_micro_batches_differ_by_summation_round_off(tiny_model_dir, aggregation):
    """float32 documents: the partial sums of the micro-batches are added in another order, so the gradients
    differ by ~eps * sqrt(tokens). From the same weights: after an Adam step, round-off-sized gradient
    differences of entries near 0 become much larger weight differences (m / sqrt(v) ~ sign(g)), which is not
    a micro-batching difference; the float64 test covers the update after a step."""
    algo = AlgorithmConfig(loss_aggregation=aggregation, kl_coef=0.05)
    bound = roundoff_bound(torch.float32, _tokens(tiny_model_dir, "shared"))
    whole = _gradients(tiny_model_dir, 1000, algo=algo, steps_before=0, dtype="float32")
    for size in (1, 8):
        assert max_rel_diff(_gradients(tiny_model_dir, size, algo=algo, steps_before=0, dtype="float32"),
                            whole) < bound


def test_shared_and_expanded_layouts_give_the_same_update(tiny_model_dir):
    shared = _gradients(tiny_model_dir, 8, layout="shared")
    expanded = _gradients(tiny_model_dir, 8, layout="expanded")
    assert max_rel_diff(shared, expanded) < EXACT_RTOL


def test_float32_layouts_differ_by_summation_round_off(tiny_model_dir):
    """float32 documents: the G copies of a prompt's gradient are summed inside attention (shared) or in the
    embedding gradient (expanded). From the same weights, for the Adam reason above."""
    shared = _gradients(tiny_model_dir, 8, layout="shared", steps_before=0, dtype="float32")
    expanded = _gradients(tiny_model_dir, 8, layout="expanded", steps_before=0, dtype="float32")
    assert max_rel_diff(shared, expanded) < roundoff_bound(torch.float32, _tokens(tiny_model_dir, "expanded"))


def test_the_step_actually_moves_the_weights(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir)
    before = params_of(trainer)
    trainer.accumulate(random_groups(2, 4, trainer.trimodel.actor.config.vocab_size))
    trainer.step()
    assert max_rel_diff(params_of(trainer), before) > 1e-4
