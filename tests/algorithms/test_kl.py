import math

import pytest
import torch

from engine.algorithms import KL_ESTIMATORS


def test_registry_names_match_config():
    from typing import get_args, get_type_hints

    from engine.config import AlgorithmConfig

    allowed = get_args(get_type_hints(AlgorithmConfig)["kl_estimator"])
    assert set(KL_ESTIMATORS) == set(allowed)


def test_values_match_schulman_formulas():
    logp_T = torch.tensor([-1.0, -2.0, -0.5])
    ref_T = torch.tensor([-1.5, -1.0, -0.5])
    diff = [0.5, -1.0, 0.0]  # logp - ref
    torch.testing.assert_close(KL_ESTIMATORS["k1"](logp_T, ref_T), torch.tensor(diff))
    torch.testing.assert_close(KL_ESTIMATORS["k2"](logp_T, ref_T), torch.tensor([0.5 * d * d for d in diff]))
    k3 = [math.exp(-d) + d - 1 for d in diff]
    torch.testing.assert_close(KL_ESTIMATORS["k3"](logp_T, ref_T), torch.tensor(k3))


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_zero_when_policies_agree(name):
    logp_T = -torch.rand(10) * 5
    assert torch.equal(KL_ESTIMATORS[name](logp_T, logp_T.clone()).abs(), torch.zeros(10))


def test_k3_is_nonnegative_and_accurate_near_zero():
    log_r_T = torch.tensor([1e-4, -1e-4, 1e-3])
    k3 = KL_ESTIMATORS["k3"](torch.zeros(3), log_r_T)
    assert (k3 > 0).all()
    torch.testing.assert_close(k3, log_r_T.double().pow(2).float() / 2, rtol=1e-2, atol=0)


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_unbiased_estimators_average_to_true_kl(name):
    """Sample x ~ pi over a small vocabulary: E[k] is KL(pi || ref) for k1 and k3 (k2 is biased)."""
    gen = torch.Generator().manual_seed(0)
    logp_V = torch.log_softmax(torch.tensor([1.0, 0.2, -0.5, 0.0]), -1)
    ref_V = torch.log_softmax(torch.tensor([0.5, 0.5, 0.0, -0.3]), -1)
    true_kl = (logp_V.exp() * (logp_V - ref_V)).sum()
    x = torch.multinomial(logp_V.exp(), 200_000, replacement=True, generator=gen)
    estimate = KL_ESTIMATORS[name](logp_V[x], ref_V[x]).mean()
    torch.testing.assert_close(estimate, true_kl, atol=3e-3, rtol=0)


def test_k3_gradient_pushes_towards_reference():
    logp_T = torch.tensor([-1.0, -3.0], requires_grad=True)
    KL_ESTIMATORS["k3"](logp_T, torch.tensor([-2.0, -2.0])).sum().backward()
    # d k3 / d logp = 1 - exp(ref - logp): positive where pi > ref (descent lowers logp), negative where pi < ref.
    torch.testing.assert_close(logp_T.grad, torch.tensor([1 - math.exp(-1.0), 1 - math.exp(1.0)]))
