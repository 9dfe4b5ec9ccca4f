import pytest
import torch

from engine.algorithms import grpo_advantages


def test_normalised_group_has_zero_mean_unit_population_std():
    rewards_BG = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.5, 1.0, 0.25]])
    adv_BG = grpo_advantages(rewards_BG, eps=0.0)
    torch.testing.assert_close(adv_BG.mean(dim=1), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(adv_BG.std(dim=1, unbiased=False), torch.ones(2))
    torch.testing.assert_close(adv_BG[0], torch.tensor([1.0, -1.0, -1.0, 1.0]))


def test_matches_formula_with_eps():
    rewards_BG = torch.tensor([[3.0, 1.0, 2.0]])
    mean, std = 2.0, (2.0 / 3.0) ** 0.5
    expected = (rewards_BG - mean) / (std + 1e-6)
    torch.testing.assert_close(grpo_advantages(rewards_BG), expected)


def test_dr_grpo_only_centres():
    rewards_BG = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 4.0, 6.0, 8.0]])
    adv_BG = grpo_advantages(rewards_BG, normalize_std=False)
    torch.testing.assert_close(adv_BG, torch.tensor([[0.75, -0.25, -0.25, -0.25], [-3.0, -1.0, 1.0, 3.0]]))


@pytest.mark.parametrize("normalize_std", [True, False])
@pytest.mark.parametrize("value", [0.0, 1.0, 0.7, 1e-3, -123.456])
def test_all_equal_rewards_give_exact_zeros(value, normalize_std):
    rewards_BG = torch.full((3, 7), value)
    adv_BG = grpo_advantages(rewards_BG, normalize_std=normalize_std)
    assert torch.equal(adv_BG, torch.zeros(3, 7))


def test_groups_are_independent_and_single_sample_groups_are_zero():
    rewards_BG = torch.tensor([[0.0, 1.0], [5.0, 5.0], [1.0, 0.0]])
    adv_BG = grpo_advantages(rewards_BG)
    assert torch.equal(adv_BG[1], torch.zeros(2))
    torch.testing.assert_close(adv_BG[0], -adv_BG[2])
    assert torch.equal(grpo_advantages(torch.tensor([[0.3], [1.0]])), torch.zeros(2, 1))


def test_rejects_flat_rewards():
    with pytest.raises(ValueError, match="2-D"):
        grpo_advantages(torch.ones(8))
