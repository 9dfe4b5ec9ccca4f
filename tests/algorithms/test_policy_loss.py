import pytest
import torch

from engine.algorithms import POLICY_LOSSES


def _grpo(logp_N, old_logp_N, adv_N, clip_low, clip_high):
    """(loss_N, clipped_N) of POLICY_LOSSES["grpo"] without dual clip (it ignores `seq_N`)."""
    out = POLICY_LOSSES["grpo"](logp_N, old_logp_N, adv_N, torch.zeros(adv_N.shape, dtype=torch.long), clip_low,
                                clip_high)
    return out.loss_N, out.clipped_N


def test_on_policy_gradient_is_vanilla_policy_gradient():
    torch.manual_seed(0)
    logp_N = (-torch.rand(16) * 3).requires_grad_()
    adv_N = torch.randn(16)
    loss_N, clipped_N = _grpo(logp_N, logp_N.detach(), adv_N, clip_low=0.2, clip_high=0.28)
    assert not clipped_N.any()
    torch.testing.assert_close(loss_N, -adv_N)  # ratio == 1
    loss_N.sum().backward()
    torch.testing.assert_close(logp_N.grad, -adv_N)


def test_values_and_clip_mask_follow_the_asymmetric_ranges():
    old_N = torch.zeros(6)
    ratio_N = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1, 0.9])
    adv_N = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0, -2.0])
    loss_N, clipped_N = _grpo(ratio_N.log(), old_N, adv_N, clip_low=0.2, clip_high=0.3)
    # ratio 1.5, A>0: clipped at 1.3.  ratio 1.5, A<0: unclipped -1.5 is smaller.
    # ratio 0.5, A>0: unclipped 0.5 is smaller.  ratio 0.5, A<0: clipped at 0.8.  Inside the range: unclipped.
    torch.testing.assert_close(loss_N, torch.tensor([-1.3, 1.5, -0.5, 0.8, -2.2, 1.8]))
    assert clipped_N.tolist() == [True, False, False, True, False, False]


def test_clipped_tokens_get_no_gradient_and_others_get_ratio_times_adv():
    old_N = torch.zeros(4)
    ratio_N = torch.tensor([2.0, 0.1, 2.0, 0.1])
    adv_N = torch.tensor([1.0, -1.0, -1.0, 1.0])
    logp_N = ratio_N.log().requires_grad_()
    loss_N, clipped_N = _grpo(logp_N, old_N, adv_N, clip_low=0.2, clip_high=0.2)
    assert clipped_N.tolist() == [True, True, False, False]
    loss_N.sum().backward()
    # d(-ratio*A)/d logp = -ratio*A where unclipped.
    torch.testing.assert_close(logp_N.grad, torch.tensor([0.0, 0.0, 2.0, -0.1]))


def test_zero_advantage_is_never_clipped():
    loss_N, clipped_N = _grpo(torch.tensor([1.0, -1.0]), torch.zeros(2), torch.zeros(2), 0.2, 0.2)
    assert not clipped_N.any()
    assert torch.equal(loss_N.abs(), torch.zeros(2))


# ----------------------------------------------------------------------------- the POLICY_LOSSES registry
def test_registry_names_and_keyword_signature():
    assert set(POLICY_LOSSES) == {"grpo", "gspo"}
    for fn in POLICY_LOSSES.values():
        out = fn(logp_N=torch.zeros(3), old_logp_N=torch.zeros(3), adv_N=torch.ones(3), seq_N=torch.tensor([0, 0, 1]),
                 clip_low=0.2, clip_high=0.2, dual_clip=None)
        loss_N, clipped_N, dual_clipped_N = out
        torch.testing.assert_close(out.loss_N, -torch.ones(3))
        assert clipped_N.dtype == dual_clipped_N.dtype == torch.bool


def _ppo_reference(logp_N, old_logp_N, adv_N, clip_low, clip_high):
    """Plain PPO, per token: -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A)."""
    ratio_N = torch.exp(logp_N - old_logp_N)
    return -torch.minimum(ratio_N * adv_N, torch.clamp(ratio_N, 1 - clip_low, 1 + clip_high) * adv_N)


@pytest.mark.parametrize("clip_low,clip_high", [(0.2, 0.2), (0.2, 0.28), (0.1, 0.5)])
def test_grpo_matches_plain_ppo_reference_values_and_gradients_float64(clip_low, clip_high):
    gen = torch.Generator().manual_seed(2)
    logp_N = (-torch.rand(256, generator=gen, dtype=torch.float64) * 4).requires_grad_()
    old_logp_N = logp_N.detach() + torch.randn(256, generator=gen, dtype=torch.float64) * 0.3
    adv_N = torch.randn(256, generator=gen, dtype=torch.float64)
    out = POLICY_LOSSES["grpo"](logp_N, old_logp_N, adv_N, torch.zeros(256, dtype=torch.long), clip_low, clip_high)
    leaf = logp_N.detach().clone().requires_grad_()
    expected_N = _ppo_reference(leaf, old_logp_N, adv_N, clip_low, clip_high)
    torch.testing.assert_close(out.loss_N, expected_N, rtol=1e-12, atol=1e-12)
    out.loss_N.sum().backward()
    expected_N.sum().backward()
    torch.testing.assert_close(logp_N.grad, leaf.grad, rtol=1e-12, atol=1e-12)
    ratio_N = torch.exp(logp_N.detach() - old_logp_N)
    clipped = ((ratio_N > 1 + clip_high) & (adv_N > 0)) | ((ratio_N < 1 - clip_low) & (adv_N < 0))
    assert torch.equal(out.clipped_N, clipped)
    assert 0.0 < out.clipped_N.double().mean() < 1.0  # some tokens on each side
    assert not out.dual_clipped_N.any()


def test_dual_clip_by_hand():
    ratio_N = torch.tensor([5.0, 2.0, 5.0, 0.5, 4.0])
    adv_N = torch.tensor([-1.0, -1.0, 1.0, -1.0, -2.0])
    logp_N = ratio_N.log().requires_grad_()
    out = POLICY_LOSSES["grpo"](logp_N, torch.zeros(5), adv_N, torch.zeros(5, dtype=torch.long),
                                clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    # r=5, A=-1: PPO loss -min(-5, -1.2) = 5 > 3|A| = 3, held at 3.   r=2, A=-1: 2 < 3, PPO loss stays.
    # r=5, A=+1: clipped at 1.2 (dual clip only acts for A < 0).      r=0.5, A=-1: clipped at 0.8.
    # r=4, A=-2: PPO loss 8 > 3 * 2 = 6, held at 6.
    torch.testing.assert_close(out.loss_N, torch.tensor([3.0, 2.0, -1.2, 0.8, 6.0]))
    assert out.dual_clipped_N.tolist() == [True, False, False, False, True]
    assert out.clipped_N.tolist() == [False, False, True, True, False]
    out.loss_N.sum().backward()
    # Only the unclipped r=2 token has a gradient: d(-r * A)/dlogp = -r * A = 2.
    torch.testing.assert_close(logp_N.grad, torch.tensor([0.0, 2.0, 0.0, 0.0, 0.0]))
    without = POLICY_LOSSES["grpo"](logp_N, torch.zeros(5), adv_N, torch.zeros(5, dtype=torch.long), 0.2, 0.2)
    torch.testing.assert_close(without.loss_N, torch.tensor([5.0, 2.0, -1.2, 0.8, 8.0]))


@pytest.mark.parametrize("name", ["grpo", "gspo"])
@pytest.mark.parametrize("clips", [dict(clip_low=1.0, clip_high=0.2), dict(clip_low=0.2, clip_high=-0.1),
                                   dict(clip_low=0.2, clip_high=0.2, dual_clip=1.0)])
def test_rejects_invalid_clip_ranges(name, clips):
    with pytest.raises(ValueError):
        POLICY_LOSSES[name](torch.zeros(2), torch.zeros(2), torch.ones(2), torch.zeros(2, dtype=torch.long), **clips)


@pytest.mark.parametrize("name", ["grpo", "gspo"])
def test_clip_fraction_is_positive_off_policy_and_zero_on_policy(name):
    # Two sequences of two tokens; log-ratios 0.5 (ratio 1.65) and -0.5 (ratio 0.61): outside [0.8, 1.2].
    logp_N = torch.tensor([-1.0, -2.0, -1.0, -2.0])
    old_logp_N = logp_N - torch.tensor([0.5, 0.5, -0.5, -0.5])
    adv_N = torch.tensor([1.0, 1.0, -1.0, -1.0])
    seq_N = torch.tensor([0, 0, 1, 1])
    out = POLICY_LOSSES[name](logp_N, old_logp_N, adv_N, seq_N, clip_low=0.2, clip_high=0.2)
    assert out.clipped_N.float().mean() == 1.0
    on = POLICY_LOSSES[name](logp_N, logp_N.clone(), adv_N, seq_N, clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    assert on.clipped_N.float().mean() == 0.0 and not on.dual_clipped_N.any()


def test_gspo_by_hand():
    # Tokens of two sequences, interleaved: seq 0 log-ratios 0.1, 0.3 (mean 0.2); seq 1: 0.0, -0.2, 0.05 (mean -0.05).
    seq_N = torch.tensor([0, 1, 0, 1, 1])
    log_ratio_N = torch.tensor([0.1, 0.0, 0.3, -0.2, 0.05])
    adv_N = torch.tensor([1.0, -2.0, 1.0, -2.0, -2.0])
    logp_N = torch.tensor([-1.0, -0.5, -2.0, -0.7, -3.0]).requires_grad_()
    out = POLICY_LOSSES["gspo"](logp_N, logp_N.detach() - log_ratio_N, adv_N, seq_N, clip_low=0.2, clip_high=0.2)
    # s_0 = exp(0.2) = 1.2214028 > 1.2 with A = 1: clipped, loss -1.2 on both its tokens.
    # s_1 = exp(-0.05) = 0.9512294 inside [0.8, 1.2], A = -2: loss -(0.9512294 * -2) = 1.9024588 on its tokens.
    torch.testing.assert_close(out.loss_N, torch.tensor([-1.2, 1.9024588, -1.2, 1.9024588, 1.9024588]))
    assert out.clipped_N.tolist() == [True, False, True, False, False]
    # seq_mean weights (1/|y_i|): d/dlogp_t = -A * s_1 / 3 = 2 * 0.9512294 / 3 = 0.6341529 on seq 1, 0 on seq 0.
    (out.loss_N / torch.tensor([2.0, 3.0, 2.0, 3.0, 3.0])).sum().backward()
    torch.testing.assert_close(logp_N.grad, torch.tensor([0.0, 0.6341529, 0.0, 0.6341529, 0.6341529]))


def test_gspo_with_the_papers_small_ranges_clips_small_drifts():
    # A sequence whose mean log-ratio is 1e-3 (ratio 1.0010005) is already outside GSPO's [1 - 3e-4, 1 + 4e-4].
    seq_N = torch.tensor([0, 0, 1, 1])
    log_ratio_N = torch.tensor([0.0005, 0.0015, 0.0001, -0.0001])
    out = POLICY_LOSSES["gspo"](torch.zeros(4), -log_ratio_N, torch.ones(4), seq_N, clip_low=3e-4, clip_high=4e-4)
    assert out.clipped_N.tolist() == [True, True, False, False]
    torch.testing.assert_close(out.loss_N, torch.tensor([-1.0004, -1.0004, -1.0, -1.0]))


@pytest.mark.parametrize("dual_clip", [None, 1.5])
def test_gspo_token_gradient_equals_sequence_level_gspo_gradient_float64(dual_clip):
    gen = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 7, (16,), generator=gen)
    seq_N = torch.repeat_interleave(torch.arange(16), lengths)[torch.randperm(int(lengths.sum()), generator=gen)]
    n = seq_N.numel()
    logp_N = (-torch.rand(n, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    drift_S = torch.randn(16, generator=gen, dtype=torch.float64) * 0.4  # per-sequence drift, so some clip
    old_logp_N = logp_N.detach() - drift_S[seq_N] - torch.randn(n, generator=gen, dtype=torch.float64) * 0.1
    adv_S = torch.randn(16, generator=gen, dtype=torch.float64)
    clip_low, clip_high = 0.1, 0.15

    out = POLICY_LOSSES["gspo"](logp_N, old_logp_N, adv_S[seq_N], seq_N, clip_low, clip_high, dual_clip)
    (out.loss_N / lengths[seq_N]).sum().backward()  # seq_mean weights, up to the constant 1 / S

    # The sequence-level GSPO objective, written per sequence.
    leaf = logp_N.detach().clone().requires_grad_()
    total = torch.zeros((), dtype=torch.float64)
    values = []
    for i in range(16):
        idx = seq_N == i
        s = torch.exp((leaf[idx] - old_logp_N[idx]).mean())
        a = adv_S[i]
        loss = -torch.minimum(s * a, torch.clamp(s, 1 - clip_low, 1 + clip_high) * a)
        if dual_clip is not None and a < 0:
            loss = torch.minimum(loss, -dual_clip * a)
        values.append(loss.detach())
        total = total + loss
    total.backward()
    torch.testing.assert_close(logp_N.grad, leaf.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.loss_N.detach(), torch.stack(values)[seq_N], rtol=1e-12, atol=1e-12)
    # The test means something: some sequences clipped, some not, and (with dual clip) some held at c|A|.
    assert 0 < out.clipped_N.sum() < n
    if dual_clip is not None:
        assert out.dual_clipped_N.any()
