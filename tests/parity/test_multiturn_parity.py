"""Training on multi-turn trajectories: observation tokens are context, never actions.

A trajectory is prompt + [turn_1 | observation_1 | turn_2 | ...]; `Completion.sampled` marks which tokens the
policy sampled. The packed shared-prompt layout must give the sampled tokens the log-probs of one plain forward
over the concatenated tokens (float64), and no loss may reach the logits that predict an observation token.
"""
import pytest
import torch

from engine.config import AlgorithmConfig, OptimConfig
from engine.types import Completion, PromptItem, RolloutGroup
from tests.helpers import EXACT_RTOL, gradients, grads_of, make_trainer, max_rel_diff, response_logprobs

# (turn, observation) lengths per trajectory: observations in the middle, at the end, and none at all
SHAPES = [[(3, 2), (2, 0)], [(2, 4), (1, 3)], [(5, 0)]]


def _trajectory(shape, vocab: int, g: torch.Generator) -> Completion:
    ids, sampled = [], []
    for turn, obs in shape:
        ids += torch.randint(1, vocab, (turn + obs,), generator=g).tolist()
        sampled += [True] * turn + [False] * obs
    return Completion(ids, [0.0] * len(ids), True, sampled=sampled)


def _group(vocab: int, version: int = 0) -> RolloutGroup:
    g = torch.Generator().manual_seed(3)
    prompt = PromptItem(index=0, prompt_ids=torch.randint(1, vocab, (6,), generator=g).tolist(), reference="1")
    group = RolloutGroup(prompt, [_trajectory(shape, vocab, g) for shape in SHAPES], version)
    group.rewards_G = torch.tensor([1.0, 0.0, 1.0])
    group.advantages_G = torch.tensor([1.0, -2.0, 1.0])
    return group


def test_packed_multiturn_logprobs_equal_a_plain_forward(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir, dtype="float64", kl_coef=0.1, norms_in_model_dtype=True)
    group = _group(trainer.trimodel.actor.config.vocab_size)
    with torch.no_grad():
        out = trainer.trimodel.forward([group], torch.device("cpu"))
        expected = torch.cat([response_logprobs(trainer.trimodel.actor, group.prompt.prompt_ids, c.token_ids)
                              [torch.tensor(c.sampled)] for c in group.completions])
    assert out.logp_N.shape == expected.shape == (sum(c.num_sampled for c in group.completions),)
    torch.testing.assert_close(out.logp_N, expected, rtol=EXACT_RTOL, atol=0)
    # every per-token tensor holds the sampled tokens alone, so per-sequence counts are the model's tokens
    assert torch.bincount(out.seq_N).tolist() == [c.num_sampled for c in group.completions]
    assert out.ref_logp_N.shape == out.entropy_N.shape == out.rollout_logp_N.shape == out.logp_N.shape


# float64 one process, and what accelerator runs use: bf16 compute with gradient checkpointing
USERS_CONFIGS = [("float64", False), ("bfloat16", True)]


@pytest.mark.parametrize("dtype, checkpointing", USERS_CONFIGS, ids=["float64", "bf16_checkpointed"])
def test_observation_logits_get_zero_gradient(tiny_model_dir, dtype, checkpointing):
    trainer = make_trainer(tiny_model_dir, dtype=dtype, kl_coef=0.1, gradient_checkpointing=checkpointing,
                           algo=AlgorithmConfig(kl_coef=0.1, loss_aggregation="seq_mean"))
    actor = trainer.trimodel.actor
    group = _group(actor.config.vocab_size)
    captured = {}

    def keep_logits(module, args, output):
        output.retain_grad()
        captured["logits"] = output

    handle = actor.lm_head.register_forward_hook(keep_logits)
    try:
        trainer.accumulate([group])
    finally:
        handle.remove()
    grad_UV = captured["logits"].grad[0]  # one packed row; rows are the logit positions, in packing order
    packed = trainer.trimodel._pack([group])
    flags = torch.tensor([s for c in group.completions for s in c.sampled])
    observed_rows = packed.target_rows[~flags].unique()
    sampled_rows = packed.target_rows[flags].unique()
    assert set(observed_rows.tolist()).isdisjoint(sampled_rows.tolist())  # one position predicts one token
    assert grad_UV[observed_rows].abs().max().item() == 0.0
    assert grad_UV[sampled_rows].abs().amax(dim=-1).min().item() > 0.0  # every action is trained


def test_token_mean_divides_by_the_sampled_tokens(tiny_model_dir):
    """The update equals the plain GRPO gradient over the sampled tokens alone, -(1/N_sampled) sum A_i grad logp_i
    (one update per iteration: ratio 1, no clipping), so observations count in no sum and no normaliser."""
    trainer = make_trainer(tiny_model_dir, dtype="float64", optim=OptimConfig(lr=1e-3, grad_clip=0.0),
                           norms_in_model_dtype=True)
    actor = trainer.trimodel.actor
    group = _group(actor.config.vocab_size)
    trainer.accumulate([group])
    trainer.finalize_gradients()
    terms = [adv * response_logprobs(actor, group.prompt.prompt_ids, c.token_ids)[torch.tensor(c.sampled)].sum()
             for c, adv in zip(group.completions, group.advantages_G.double())]
    expected = gradients(actor, -torch.stack(terms).sum() / sum(c.num_sampled for c in group.completions))
    assert max_rel_diff(grads_of(trainer), expected) < EXACT_RTOL


def test_bf16_checkpointed_multiturn_gradients_are_a_plain_backwards(tiny_model_dir):
    """Checkpointing recomputes each layer over the packed multi-turn row (observations, holes and all): the
    gradients are those of the plain bf16 backward, bit for bit (the same ops on the same values)."""
    grads = {}
    for checkpointing in (False, True):
        trainer = make_trainer(tiny_model_dir, dtype="bfloat16", kl_coef=0.1, gradient_checkpointing=checkpointing)
        assert trainer.trimodel.actor.is_gradient_checkpointing == checkpointing
        trainer.accumulate([_group(trainer.trimodel.actor.config.vocab_size)])
        grads[checkpointing] = {n: p.grad.clone() for n, p in trainer.trimodel.actor.named_parameters()}
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=0, atol=0, msg=name)
