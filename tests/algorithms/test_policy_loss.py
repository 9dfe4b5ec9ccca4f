import pytest
import torch

from engine.algorithms import clipped_surrogate


def test_on_policy_gradient_is_vanilla_policy_gradient():
    torch.manual_seed(0)
    logp_T = (-torch.rand(16) * 3).requires_grad_()
    adv_T = torch.randn(16)
    loss_T, clipped_T = clipped_surrogate(logp_T, logp_T.detach(), adv_T, clip_low=0.2, clip_high=0.28)
    assert not clipped_T.any()
    torch.testing.assert_close(loss_T, -adv_T)  # ratio == 1
    loss_T.sum().backward()
    torch.testing.assert_close(logp_T.grad, -adv_T)


def test_values_and_clip_mask_follow_the_asymmetric_ranges():
    old_T = torch.zeros(6)
    ratio_T = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1, 0.9])
    adv_T = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0, -2.0])
    loss_T, clipped_T = clipped_surrogate(ratio_T.log(), old_T, adv_T, clip_low=0.2, clip_high=0.3)
    # ratio 1.5, A>0: clipped at 1.3.  ratio 1.5, A<0: unclipped -1.5 is smaller.
    # ratio 0.5, A>0: unclipped 0.5 is smaller.  ratio 0.5, A<0: clipped at 0.8.  Inside the range: unclipped.
    torch.testing.assert_close(loss_T, torch.tensor([-1.3, 1.5, -0.5, 0.8, -2.2, 1.8]))
    assert clipped_T.tolist() == [True, False, False, True, False, False]


def test_clipped_tokens_get_no_gradient_and_others_get_ratio_times_adv():
    old_T = torch.zeros(4)
    ratio_T = torch.tensor([2.0, 0.1, 2.0, 0.1])
    adv_T = torch.tensor([1.0, -1.0, -1.0, 1.0])
    logp_T = ratio_T.log().requires_grad_()
    loss_T, clipped_T = clipped_surrogate(logp_T, old_T, adv_T, clip_low=0.2, clip_high=0.2)
    assert clipped_T.tolist() == [True, True, False, False]
    loss_T.sum().backward()
    # d(-ratio*A)/d logp = -ratio*A where unclipped.
    torch.testing.assert_close(logp_T.grad, torch.tensor([0.0, 0.0, 2.0, -0.1]))


def test_zero_advantage_is_never_clipped():
    loss_T, clipped_T = clipped_surrogate(torch.tensor([1.0, -1.0]), torch.zeros(2), torch.zeros(2), 0.2, 0.2)
    assert not clipped_T.any()
    assert torch.equal(loss_T.abs(), torch.zeros(2))


@pytest.mark.parametrize("clip", [0.1, 0.2])
def test_symmetric_clip_is_ppo_min_formula(clip):
    torch.manual_seed(1)
    logp_T, old_T, adv_T = torch.randn(64) * 0.3, torch.randn(64) * 0.3, torch.randn(64)
    ratio_T = (logp_T - old_T).exp()
    expected = -torch.minimum(ratio_T * adv_T, ratio_T.clamp(1 - clip, 1 + clip) * adv_T)
    loss_T, _ = clipped_surrogate(logp_T, old_T, adv_T, clip, clip)
    torch.testing.assert_close(loss_T, expected)
