"""Several updates per iteration (PPO mini-batches and epochs): real clipping against the rollout policy; every
advantage estimator and GSPO's sequence-level ratio, each against its formula written out plainly.

The exact comparisons run all in float64 (model.dtype=float64, norms kept in float64: helpers.make_trainer's
`norms_in_model_dtype`) against EXACT_RTOL."""
from __future__ import annotations

import json

import pytest
import torch

from engine.config import AlgorithmConfig, Config, ModelConfig, OptimConfig
from engine import metrics as M
from engine.controller import mean_metrics
from engine.group_stream import GroupStream
from engine.train import run
from engine.types import Completion
from helpers import EXACT_RTOL, gradients, grads_of, make_trainer, max_rel_diff, random_groups, response_logprobs
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
            logp = response_logprobs(actor, group.prompt.prompt_ids, completion.token_ids)
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
    reference = gradients(actor, _reference_loss(actor, groups[2:], advs, 0.2, 0.2))
    trainer.accumulate(groups[2:])
    trainer.finalize_gradients()
    assert max_rel_diff(grads_of(trainer), reference) < EXACT_RTOL


def test_a_run_with_mini_batches_and_epochs_reports_its_steps(tiny_model_dir, tmp_path):
    run(small_config(tiny_model_dir, tmp_path, **{"rollout.prompts_per_iteration": 4, "algorithm.ppo_mini_batches": 2,
                                                   "algorithm.ppo_epochs": 2}))
    line = json.loads((tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["optim/steps"] == 4 and line["policy/version"] == 3


# Each estimator's formula written plainly over rewards_BG (B prompts, G samples), with the config's default
# std (population: divide by n) and eps 1e-6. No group or batch here has all-equal rewards.
EPS = 1e-6
HAND_ADVANTAGES = {
    "grpo": lambda r: (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True, unbiased=False) + EPS),
    "dr_grpo": lambda r: r - r.mean(1, keepdim=True),
    "rloo": lambda r: r - (r.sum(1, keepdim=True) - r) / (r.shape[1] - 1),
    "reinforce_pp": lambda r: (r - r.mean()) / (r.std(unbiased=False) + EPS),
    "reinforce_pp_baseline": lambda r: HAND_ADVANTAGES["reinforce_pp"](r - r.mean(1, keepdim=True)),
}


@pytest.mark.parametrize("advantage", sorted(HAND_ADVANTAGES))
def test_every_advantage_estimator_drives_the_gradient_in_the_loop(tiny_model_dir, advantage):
    """The controller's advantage stage, then the trainer: the gradient is the policy gradient of the named
    estimator's advantages (on-policy, token mean), computed here from its formula."""
    algo = AlgorithmConfig(advantage=advantage)
    trainer = make_trainer(tiny_model_dir, layout="expanded", algo=algo, optim=OptimConfig(grad_clip=0.0),
                           dtype="float64", norms_in_model_dtype=True)
    groups = _with_rollout_logprobs(trainer, random_groups(3, 4, 256, seed=3))
    rewards = torch.Generator().manual_seed(4)
    for group in groups:  # float64 rewards spread over [0, 1): every estimator keeps float64 and differs
        group.rewards_G = torch.rand(group.group_size, dtype=torch.float64, generator=rewards)
    hand_BG = HAND_ADVANTAGES[advantage](torch.stack([g.rewards_G for g in groups]))
    actor = trainer.trimodel.actor
    reference = gradients(actor, _reference_loss(actor, groups, hand_BG, 0.2, 0.2))
    cfg = Config(model=ModelConfig(path=str(tiny_model_dir)), algorithm=algo)
    supply = GroupStream(cfg, rollout=None, prompt_stream=None, trimodel=trainer.trimodel, timer=M.StageTimer())
    trainer.accumulate(list(supply._with_advantages(groups)))  # what a run does to the arriving groups
    trainer.finalize_gradients()
    assert max_rel_diff(grads_of(trainer), reference) < EXACT_RTOL


def _gspo_reference_loss(actor, groups, clip_low, clip_high) -> tuple[torch.Tensor, int]:
    """GSPO's sequence-level objective written plainly (Zheng et al. 2025, eq. 7): one ratio per sequence,
    s_i = exp(1/|y_i| * sum_t (logp_t - old_logp_t)), loss = mean_i -min(s_i A_i, clip(s_i) A_i); and how
    many sequences the clip holds."""
    objectives, clipped = [], 0
    for group in groups:
        for completion, adv in zip(group.completions, group.advantages_G):
            logp = response_logprobs(actor, group.prompt.prompt_ids, completion.token_ids)
            s = torch.exp((logp - torch.tensor(completion.logprobs, dtype=torch.float64)).mean())
            unclipped, held = s * adv, s.clamp(1 - clip_low, 1 + clip_high) * adv
            clipped += int(held < unclipped)
            objectives.append(torch.minimum(unclipped, held))
    return -torch.stack(objectives).mean(), clipped


def test_gspo_gradient_is_the_sequence_level_ratio_objectives(tiny_model_dir):
    """Off-policy (rollout log-probs moved by per-token noise, as after an earlier mini-batch), GSPO's
    per-token form aggregated by seq_mean has the gradient of the sequence-level objective."""
    algo = AlgorithmConfig(policy_loss="gspo", loss_aggregation="seq_mean", clip_low=3e-4, clip_high=4e-4,
                           ppo_mini_batches=2)  # several updates: the old log-probs are the rollout's
    trainer = make_trainer(tiny_model_dir, layout="expanded", algo=algo, optim=OptimConfig(grad_clip=0.0),
                           dtype="float64", norms_in_model_dtype=True)
    groups = _with_rollout_logprobs(trainer, random_groups(4, 4, 256, seed=11))
    noise = torch.Generator().manual_seed(12)
    for group in groups:
        group.completions = [Completion(c.token_ids, (torch.tensor(c.logprobs, dtype=torch.float64) + 1e-3 *
                                                      torch.randn(len(c.logprobs), generator=noise,
                                                                  dtype=torch.float64)).tolist(), c.finished)
                             for c in group.completions]
        group.advantages_G = torch.randn(group.group_size, generator=noise, dtype=torch.float64)
    actor = trainer.trimodel.actor
    loss, clipped = _gspo_reference_loss(actor, groups, 3e-4, 4e-4)
    assert 0 < clipped < 16  # both branches of the sequence clip are exercised
    reference = gradients(actor, loss)
    trainer.accumulate(groups)
    trainer.finalize_gradients()
    assert max_rel_diff(grads_of(trainer), reference) < EXACT_RTOL
