import pytest
import torch

from engine.algorithms import AGGREGATIONS, LossTotals, count_totals, entropy_from_logits


def _ragged_batch(seed: int = 0):
    """Six sequences of ragged lengths packed flat, each preceded by prompt tokens (mask 0, seq index -1)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [3, 1, 7, 2, 5, 4]
    seqs = []
    for n in lengths:
        prompt = int(torch.randint(1, 4, (1,), generator=gen))
        loss = torch.randn(prompt + n, generator=gen)
        mask = torch.cat([torch.zeros(prompt), torch.ones(n)])
        mask[-1] = 0.0 if n > 3 else 1.0  # a masked-out response token (e.g. a truncated stop)
        seqs.append((loss, mask))
    return seqs


def _pack(seqs):
    loss_T = torch.cat([s[0] for s in seqs])
    mask_T = torch.cat([s[1] for s in seqs])
    seq_idx_T = torch.cat([torch.full((len(s[0]),), i) for i, s in enumerate(seqs)])
    seq_idx_T = torch.where(mask_T.bool(), seq_idx_T, -1)
    return loss_T, mask_T, seq_idx_T


def _totals(seqs):
    return count_totals(int(m.sum()) for _, m in seqs)


def test_registry_names_match_config():
    from typing import get_args, get_type_hints

    from engine.config import AlgorithmConfig

    allowed = get_args(get_type_hints(AlgorithmConfig)["loss_aggregation"])
    assert set(AGGREGATIONS) == set(allowed)


def test_token_mean_and_seq_mean_values():
    seqs = _ragged_batch()
    loss_T, mask_T, seq_idx_T = _pack(seqs)
    totals = _totals(seqs)
    token = sum((l * m).sum() for l, m in seqs) / sum(m.sum() for _, m in seqs)
    seq = sum((l * m).sum() / m.sum() for l, m in seqs) / len(seqs)
    torch.testing.assert_close(AGGREGATIONS["token_mean"](loss_T, mask_T, seq_idx_T, totals), token)
    torch.testing.assert_close(AGGREGATIONS["seq_mean"](loss_T, mask_T, seq_idx_T, totals), seq)


@pytest.mark.parametrize("name", ["token_mean", "seq_mean"])
@pytest.mark.parametrize("micro_batch_size", [1, 2, 4])
def test_micro_batches_sum_to_full_batch_loss_and_gradient(name, micro_batch_size):
    aggregate = AGGREGATIONS[name]
    seqs = _ragged_batch(seed=micro_batch_size)
    totals = _totals(seqs)

    full_loss_T, mask_T, seq_idx_T = _pack(seqs)
    full_leaf = full_loss_T.clone().requires_grad_()
    full = aggregate(full_leaf * 1.0, mask_T, seq_idx_T, totals)
    full.backward()

    leaves = [s[0].clone().requires_grad_() for s in seqs]
    summed = torch.zeros(())
    for start in range(0, len(seqs), micro_batch_size):
        chunk = [(leaves[i], seqs[i][1]) for i in range(start, min(start + micro_batch_size, len(seqs)))]
        loss_T, mb_mask_T, mb_idx_T = _pack(chunk)  # sequence indices restart at 0 per micro-batch
        mb = aggregate(loss_T, mb_mask_T, mb_idx_T, totals)
        mb.backward()
        summed = summed + mb.detach()

    torch.testing.assert_close(summed, full.detach())
    torch.testing.assert_close(torch.cat([l.grad for l in leaves]), full_leaf.grad)


def test_seq_mean_accepts_padded_layout():
    loss_NR = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask_NR = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    seq_idx_NR = torch.arange(2)[:, None].expand(2, 3)
    totals = LossTotals(tokens=4, seqs=2)
    torch.testing.assert_close(AGGREGATIONS["seq_mean"](loss_NR, mask_NR, seq_idx_NR, totals), torch.tensor(3.0))
    torch.testing.assert_close(AGGREGATIONS["token_mean"](loss_NR, mask_NR, seq_idx_NR, totals), torch.tensor(2.5))


def test_totals_skip_empty_sequences_and_reject_empty_iterations():
    assert count_totals([3, 0, 2]) == LossTotals(tokens=5, seqs=2)
    with pytest.raises(ValueError, match="at least one"):
        count_totals([0, 0])


def test_entropy_matches_definition_and_is_stable():
    logits_TV = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, -1000.0, 5.0], [2.0, float("-inf"), 1.0, 0.0]])
    logits_TV.requires_grad_()
    entropy_T = entropy_from_logits(logits_TV)
    p = torch.softmax(torch.tensor([2.0, 1.0, 0.0]), -1)
    torch.testing.assert_close(entropy_T[0], torch.log(torch.tensor(4.0)))
    torch.testing.assert_close(entropy_T[1], torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(entropy_T[2], -(p * p.log()).sum())
    entropy_T.sum().backward()
    assert torch.isfinite(logits_TV.grad).all()
    assert entropy_from_logits(logits_TV.detach().bfloat16()).dtype == torch.float32
