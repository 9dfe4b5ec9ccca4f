import pytest
import torch

from engine.algorithms import ADVANTAGES, NEEDS_FULL_BATCH, needs_full_batch


def test_population_grpo_has_zero_mean_unit_population_std():
    rewards_BG = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.5, 1.0, 0.25]])
    adv_BG = ADVANTAGES["grpo"](rewards_BG, std="population", eps=0.0)
    torch.testing.assert_close(adv_BG.mean(dim=1), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(adv_BG.std(dim=1, unbiased=False), torch.ones(2))
    torch.testing.assert_close(adv_BG[0], torch.tensor([1.0, -1.0, -1.0, 1.0]))


def test_population_grpo_matches_formula_with_eps():
    rewards_BG = torch.tensor([[3.0, 1.0, 2.0]])
    mean, std = 2.0, (2.0 / 3.0) ** 0.5
    expected = (rewards_BG - mean) / (std + 1e-6)
    torch.testing.assert_close(ADVANTAGES["grpo"](rewards_BG, std="population"), expected)


# ----------------------------------------------------------------------------- the ADVANTAGES registry


def test_registry_names():
    assert set(ADVANTAGES) == {"grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"}
    assert NEEDS_FULL_BATCH == {"reinforce_pp", "reinforce_pp_baseline"}


def test_grpo_sample_and_population_std_by_hand():
    rewards_BG = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 4.0, 6.0, 8.0]])
    # Row 0: mean 0.5, deviations +-0.5; sample var = 4 * 0.25 / 3 = 1/3 (std 0.5773503), population var 0.25.
    # Row 1: mean 5, deviations -3 -1 1 3; sample var = 20 / 3 (std 2.5819889), population var 5 (std 2.2360680).
    sample = ADVANTAGES["grpo"](rewards_BG, std="sample", eps=0.0)
    torch.testing.assert_close(sample, torch.tensor([[0.8660254, -0.8660254, -0.8660254, 0.8660254],
                                                     [-1.1618950, -0.3872983, 0.3872983, 1.1618950]]))
    population = ADVANTAGES["grpo"](rewards_BG, std="population", eps=0.0)
    torch.testing.assert_close(population, torch.tensor([[1.0, -1.0, -1.0, 1.0],
                                                         [-1.3416408, -0.4472136, 0.4472136, 1.3416408]]))


def test_grpo_default_is_sample_std_with_eps():
    # mean 2, deviations 1 -1 0; sample std = sqrt(2 / 2) = 1, so adv = deviation / (1 + 1e-6).
    adv_BG = ADVANTAGES["grpo"](torch.tensor([[3.0, 1.0, 2.0]]))
    torch.testing.assert_close(adv_BG, torch.tensor([[0.999999, -0.999999, 0.0]]))


def test_dr_grpo_by_hand_ignores_std():
    rewards_BG = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 4.0, 6.0, 8.0]])
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25], [-3.0, -1.0, 1.0, 3.0]])
    torch.testing.assert_close(ADVANTAGES["dr_grpo"](rewards_BG), expected)
    torch.testing.assert_close(ADVANTAGES["dr_grpo"](rewards_BG, std="population", eps=0.5), expected)


def test_rloo_by_hand():
    rewards_BG = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 4.0, 6.0, 8.0], [3.0, 1.0, 2.0, 2.0]])
    # Each reward minus the mean of the other three:
    # row 0: 1 - 0 = 1;  0 - 1/3.                 row 1: 2 - 18/3, 4 - 16/3, 6 - 14/3, 8 - 12/3.
    # row 2: 3 - 5/3 = 4/3;  1 - 7/3 = -4/3;  2 - 6/3 = 0 (twice).
    expected = torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3], [-4.0, -4 / 3, 4 / 3, 4.0], [4 / 3, -4 / 3, 0.0, 0.0]])
    torch.testing.assert_close(ADVANTAGES["rloo"](rewards_BG), expected)


def test_rloo_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        ADVANTAGES["rloo"](torch.tensor([[1.0], [0.0]]))


def test_reinforce_pp_normalises_over_the_whole_batch_by_hand():
    rewards_BG = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # Batch mean 0.75, deviations 0.25 -0.75 0.25 0.25; squared sum 0.75.
    # Sample std sqrt(0.75 / 3) = 0.5; population std sqrt(0.75 / 4) = 0.4330127.
    torch.testing.assert_close(ADVANTAGES["reinforce_pp"](rewards_BG, std="sample", eps=0.0),
                               torch.tensor([[0.5, -1.5], [0.5, 0.5]]))
    torch.testing.assert_close(ADVANTAGES["reinforce_pp"](rewards_BG, std="population", eps=0.0),
                               torch.tensor([[0.5773503, -1.7320508], [0.5773503, 0.5773503]]))


def test_reinforce_pp_baseline_centres_per_group_then_normalises_over_the_batch_by_hand():
    rewards_BG = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # Group-centred: 0.5 -0.5 | 0 0 (batch mean 0); squared sum 0.5.
    # Sample std sqrt(0.5 / 3) = 0.4082483; population std sqrt(0.5 / 4) = 0.3535534.
    torch.testing.assert_close(ADVANTAGES["reinforce_pp_baseline"](rewards_BG, std="sample", eps=0.0),
                               torch.tensor([[1.2247449, -1.2247449], [0.0, 0.0]]))
    torch.testing.assert_close(ADVANTAGES["reinforce_pp_baseline"](rewards_BG, std="population", eps=0.0),
                               torch.tensor([[1.4142136, -1.4142136], [0.0, 0.0]]))
    # GRPO on the same rewards uses row 0's own std, sqrt(0.5 / 1) = 0.7071068.
    torch.testing.assert_close(ADVANTAGES["grpo"](rewards_BG, eps=0.0), torch.tensor([[0.7071068, -0.7071068],
                                                                                      [0.0, 0.0]]))


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
@pytest.mark.parametrize("std", ["sample", "population"])
@pytest.mark.parametrize("value", [0.0, 1.0, 0.7, -123.456])
def test_every_estimator_gives_exact_zeros_without_signal(name, std, value):
    assert torch.equal(ADVANTAGES[name](torch.full((3, 7), value), std=std), torch.zeros(3, 7))


@pytest.mark.parametrize("name", sorted(set(ADVANTAGES) - {"rloo"}))
def test_single_sample_groups_are_zero_and_warning_free(name, recwarn):
    rewards_BG = torch.tensor([[0.3], [1.0]]) if name not in NEEDS_FULL_BATCH else torch.tensor([[0.3]])
    assert torch.equal(ADVANTAGES[name](rewards_BG), torch.zeros_like(rewards_BG))
    assert not recwarn.list


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_needs_full_batch_says_which_estimators_can_run_group_by_group(name):
    rewards_BG = torch.tensor([[1.0, 0.0, 0.5, 0.0], [1.0, 1.0, 1.0, 0.0], [0.2, 0.9, 0.4, 0.4]])
    whole = ADVANTAGES[name](rewards_BG)
    by_group = torch.cat([ADVANTAGES[name](rewards_BG[b:b + 1]) for b in range(3)])
    assert torch.allclose(whole, by_group) is not needs_full_batch(name)


def test_needs_full_batch_rejects_unknown_names():
    with pytest.raises(KeyError, match="unknown advantage estimator"):
        needs_full_batch("ppo")


@pytest.mark.parametrize("name", ["grpo", "reinforce_pp", "reinforce_pp_baseline"])
def test_rejects_unknown_std(name):
    with pytest.raises(ValueError, match="std must be"):
        ADVANTAGES[name](torch.tensor([[1.0, 0.0]]), std="unbiased")


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_dtypes_and_shape_checks(name):
    assert ADVANTAGES[name](torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64)).dtype == torch.float64
    assert ADVANTAGES[name](torch.tensor([[1, 0, 2]])).dtype == torch.float32
    with pytest.raises(ValueError, match="2-D"):
        ADVANTAGES[name](torch.ones(8))


def test_reinforce_pp_has_no_group_baseline_so_uniform_groups_still_get_signal():
    # Batch mean 0.5, deviations +-0.5 (four of them); sample std sqrt(1 / 3) = 0.5773503, 0.5 / it = 0.8660254.
    adv_BG = ADVANTAGES["reinforce_pp"](torch.tensor([[1.0, 1.0], [0.0, 0.0]]), eps=0.0)
    torch.testing.assert_close(adv_BG, torch.tensor([[0.8660254, 0.8660254], [-0.8660254, -0.8660254]]))
    assert torch.equal(ADVANTAGES["reinforce_pp_baseline"](torch.tensor([[1.0, 1.0], [0.0, 0.0]])), torch.zeros(2, 2))
