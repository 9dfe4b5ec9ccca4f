"""DAPO dynamic sampling in the streaming schedule: uninformative groups are dropped, new prompts fill in."""
from __future__ import annotations

import json

import torch

from engine.build import build_components
from engine.controller import Controller
from engine.rewards import RewardResult
from engine.train import run
from test_controller import small_config



def test_groups_with_equal_rewards_are_dropped_and_replaced(tiny_model_dir, tmp_path):
    cfg = small_config(tiny_model_dir, tmp_path, **{"algorithm.dynamic_sampling": "true",
                                                    "algorithm.max_sampling_rounds": 4,
                                                    "rollout.prompts_per_iteration": 4})
    parts = build_components(cfg, tmp_path / "run")
    controller = Controller(parts)
    trimodel = parts.trainer.trimodel
    scorer = trimodel.score

    def score(group):
        """A scorer whose outcome is known: prompts of even index informative (0/1), odd ones all 0."""
        scorer(group)
        group.rewards_G = group.scores_G = torch.tensor([0.0, 1.0] * 2) if group.prompt.index % 2 == 0 else torch.zeros(4)

    trimodel.score = score  # this test's own instance
    prompts = parts.stream.next_batch(4)
    groups = list(controller._groups(prompts, controller._sampling(0)))
    parts.rollout.close()
    assert all(g.prompt.index % 2 == 0 for g in groups)  # only informative groups are kept
    assert len(groups) == 4  # refilled up to B from later rounds
    assert controller.sampling["rollout/dropped_groups"] >= 2 and controller.sampling["rollout/sampling_rounds"] >= 2


def length_parity_reward(completion: str, reference: str) -> RewardResult:
    """A reward that varies within a group whatever the model (the miniature rarely answers right)."""
    return RewardResult(float(len(completion) % 2), True)


def test_a_run_with_dynamic_sampling_logs_what_it_dropped(tiny_model_dir, tmp_path):
    run(small_config(tiny_model_dir, tmp_path, **{"algorithm.dynamic_sampling": "true", "run.iterations": 2,
                                                   "optim.lr": 1e-3, "algorithm.max_sampling_rounds": 6,
                                                   "reward.function": "test_dynamic_sampling:length_parity_reward"}))
    line = json.loads((tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "rollout/dropped_groups" in line and line["rollout/sampling_rounds"] >= 1
