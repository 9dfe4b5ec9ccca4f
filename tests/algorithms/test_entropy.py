"""entropy_from_logits: the policy's entropy per position, from logits."""
import torch

from engine.algorithms import entropy_from_logits


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
