"""Several updates per iteration (PPO mini-batches and epochs): real clipping against the rollout policy."""
from __future__ import annotations

import json

import pytest
import torch

from engine.config import AlgorithmConfig, OptimConfig
from engine.controller import mean_metrics
from engine.train import run
from engine.types import Completion
from helpers import make_trainer, random_groups
from test_controller import small_config


def _with_rollout_logprobs(trainer, groups):
    """Fill each completion's log-probs with the current actor's: the rollout policy is version k."""
    with torch.no_grad():
        logp_N = trainer.trimodel.forward(groups, torch.device("cpu")).logp_N.tolist()
    for group in groups:
        new = []
        for c in group.completions:
            new.append(Completion(c.token_ids, logp_N[:len(c.token_ids)], c.finished))
            logp_N = logp_N[len(c.token_ids):]
        group.completions = new
    return groups


def _reference_loss(actor, groups, adv_G_list, clip_low, clip_high):
    """PPO's clipped surrogate written plainly: one forward per (prompt + response), token mean over the
    mini-batch, ratio against the rollout log-probs, min(r * A, clip(r) * A)."""
    losses = []
    for group, adv_G in zip(groups, adv_G_list):
        for completion, adv in zip(group.completions, adv_G):
            ids = torch.tensor([group.prompt.prompt_ids + completion.token_ids])
            logits = actor(input_ids=ids).logits[0].double()
            P = len(group.prompt.prompt_ids)
            logp = torch.log_softmax(logits[P - 1:-1], dim=-1).gather(1, torch.tensor(completion.token_ids)[:, None])[:, 0]
            ratio = torch.exp(logp - torch.tensor(completion.logprobs, dtype=torch.float64))
            surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_low, 1 + clip_high) * adv)
            losses.append(-surrogate)
    flat = torch.cat(losses)
    return flat.sum() / flat.numel()


def test_mini_batches_clip_and_match_a_plain_ppo_loss(tiny_model_dir):
    algo = AlgorithmConfig(ppo_mini_batches=4, clip_low=0.2, clip_high=0.28)
    trainer = make_trainer(tiny_model_dir, layout="expanded", algo=algo, optim=OptimConfig(lr=3e-2, grad_clip=0.0),
                           dtype="float64", norms_in_model_dtype=True)  # all-float64: exact comparisons
    groups = _with_rollout_logprobs(trainer, random_groups(8, 4, 256, seed=5))
    steps = []
    for mini in (groups[i:i + 2] for i in range(0, len(groups), 2)):
        advs = [(g.rewards_G - g.rewards_G.mean()) / (g.rewards_G.std(unbiased=False) + 1e-6) for g in mini]
        trainer.accumulate(mini)
        expected = _reference_loss(trainer.trimodel.actor, mini, advs, 0.2, 0.28)
        steps.append(trainer.step_mini_batch())
        assert steps[-1]["policy/loss"] == pytest.approx(expected.item(), rel=1e-9)
    trainer.end_iteration()
    assert steps[0]["policy/clip_frac"] == 0.0  # the first mini-batch is on-policy: ratio 1
    assert max(s["policy/clip_frac"] for s in steps[1:]) > 0  # later ones moved away and are clipped
    assert trainer.version == 1 and mean_metrics(steps)["optim/steps"] == 4


def test_gradient_of_a_later_mini_batch_equals_the_plain_ppo_gradient(tiny_model_dir):
    algo = AlgorithmConfig(ppo_mini_batches=2)
    trainer = make_trainer(tiny_model_dir, layout="expanded", algo=algo, optim=OptimConfig(lr=3e-2, grad_clip=0.0),
                           dtype="float64", norms_in_model_dtype=True)  # all-float64: exact comparisons
    groups = _with_rollout_logprobs(trainer, random_groups(4, 4, 256, seed=7))
    trainer.accumulate(groups[:2])
    trainer.step_mini_batch()
    actor = trainer.trimodel.actor
    advs = [(g.rewards_G - g.rewards_G.mean()) / (g.rewards_G.std(unbiased=False) + 1e-6) for g in groups[2:]]
    reference = torch.autograd.grad(_reference_loss(actor, groups[2:], advs, 0.2, 0.2), list(actor.parameters()))
    trainer.accumulate(groups[2:])
    trainer.finalize_gradients()
    for p, g in zip(actor.parameters(), reference):
        assert ((p.grad - g).abs().max() / g.abs().max().clamp_min(1e-30)).item() < 1e-9


def test_a_run_with_mini_batches_and_epochs_reports_its_steps(tiny_model_dir, tmp_path):
    run(small_config(tiny_model_dir, tmp_path, **{"rollout.prompts_per_iteration": 4, "algorithm.ppo_mini_batches": 2,
                                                   "algorithm.ppo_epochs": 2}))
    line = json.loads((tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["optim/steps"] == 4 and line["policy/version"] == 3


@pytest.mark.parametrize("advantage", ["rloo", "dr_grpo", "reinforce_pp", "reinforce_pp_baseline"])
def test_every_advantage_estimator_runs_in_the_loop(tiny_model_dir, tmp_path, advantage):
    run(small_config(tiny_model_dir, tmp_path, **{"algorithm.advantage": advantage, "run.iterations": 1}))


def test_gspo_runs_in_the_loop(tiny_model_dir, tmp_path):
    run(small_config(tiny_model_dir, tmp_path, **{"algorithm.policy_loss": "gspo", "algorithm.clip_low": 3e-4,
                                                   "algorithm.clip_high": 4e-4, "algorithm.loss_aggregation": "seq_mean",
                                                   "run.iterations": 1}))
