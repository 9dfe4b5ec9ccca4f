"""DAPO dynamic sampling in the streaming schedule: uninformative groups are dropped, new prompts fill in."""
from __future__ import annotations

import pytest
import torch

from engine.build import build_components
from engine.controller import Controller, sampling_params
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
    groups = list(controller.supply.groups(prompts, sampling_params(cfg, 0, controller._stop_ids())))
    parts.rollout.close()
    assert all(g.prompt.index % 2 == 0 for g in groups)  # only informative groups are kept
    assert len(groups) == 4  # refilled up to B from later rounds
    assert controller.supply.figures["rollout/dropped_groups"] >= 2 and controller.supply.figures["rollout/sampling_rounds"] >= 2


def test_metrics_cover_every_sampled_group_and_count_the_kept_ones(tiny_model_dir, tmp_path):
    """reward/* and rollout/* describe what was generated, dropped groups included; kept_groups is what trained.
    Even prompts score [0, 1, 0, 1] (kept), odd ones [1, 1, 1, 1] (dropped): a mean over the kept groups alone
    would be 0.5, over all of them it is higher."""
    cfg = small_config(tiny_model_dir, tmp_path, **{"algorithm.dynamic_sampling": "true", "run.iterations": 1,
                                                    "algorithm.max_sampling_rounds": 4,
                                                    "rollout.prompts_per_iteration": 4, "eval.before": "false"})
    parts = build_components(cfg, tmp_path / "run")
    parts.run_dir.mkdir()  # the iteration appends its timeline there
    controller = Controller(parts)
    trimodel, scorer, seen = parts.trainer.trimodel, parts.trainer.trimodel.score, []

    def score(group):
        scorer(group)
        informative = group.prompt.index % 2 == 0
        group.rewards_G = group.scores_G = torch.tensor([0.0, 1.0] * 2) if informative else torch.ones(4)
        seen.append(group)

    trimodel.score = score  # this test's own instance
    try:
        metrics = controller.iteration(0)
    finally:
        parts.rollout.close()
    odd = sum(g.prompt.index % 2 for g in seen)
    assert metrics["rollout/kept_groups"] == 4 and metrics["rollout/dropped_groups"] == odd == len(seen) - 4 > 0
    expected = (0.5 * 4 + 1.0 * odd) / len(seen)
    assert metrics["reward/mean"] == pytest.approx(expected) and metrics["reward/accuracy"] == pytest.approx(expected)
    lengths = [len(c.token_ids) for g in seen for c in g.completions]
    assert metrics["rollout/response_len_mean"] == pytest.approx(sum(lengths) / len(lengths))
