"""Mixed precision: float32 masters and optimizer state, compute-dtype forwards (with gradient checkpointing too),
frozen copies that compute the trainer's function, float16 without lost steps, exact resume under bf16."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine.controller import micro_batches
from engine.models import frozen_copy
from engine.precision import Precision, in_compute_dtype, resolve_precision
from engine.train import run
from helpers import make_trainer, random_groups, roundoff_bound
from test_controller import final_weights, kill_in_third_iteration_then_resume, small_config


@pytest.mark.parametrize("dtype, backend, compute", [("auto", "cpu", torch.float32), ("auto", "cuda", torch.bfloat16),
                                                     ("auto", "ascend", torch.bfloat16),
                                                     ("float16", "cpu", torch.float16),
                                                     ("float64", "cpu", torch.float64)])
def test_masters_are_float32_whatever_the_compute_dtype(dtype, backend, compute):
    precision = resolve_precision(dtype, backend)
    assert precision.compute == compute
    assert precision.master == (torch.float64 if compute == torch.float64 else torch.float32)
    assert precision.loss_dtype == precision.master and precision.loss_scaling == (compute == torch.float16)


def test_bf16_run_keeps_float32_masters_and_optimizer_state_and_small_updates_land(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir, dtype="bfloat16")
    trainer.optimizer.param_groups[0]["lr"] = trainer.optimizer.param_groups[1]["lr"] = 1e-6
    actor = trainer.trimodel.actor
    before = {n: p.detach().clone() for n, p in actor.named_parameters()}
    trainer.accumulate(random_groups(4, 4, actor.config.vocab_size))
    grads = {n: p.grad.clone() for n, p in actor.named_parameters()}
    assert all(g.dtype == torch.float32 for g in grads.values())  # accumulated in float32
    trainer.step()
    assert all(p.dtype == torch.float32 for p in actor.parameters())
    state = [s for s in trainer.optimizer.state.values()]
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state)
    changed = torch.cat([(p.detach() != before[n])[grads[n] != 0] for n, p in actor.named_parameters()])
    assert changed.float().mean() > 0.99  # a 1e-6 step would round away in bf16 parameters


def test_in_compute_dtype_computes_in_the_compute_dtype_and_returns_float32_gradients(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir, dtype="bfloat16", layout="expanded")
    actor = trainer.trimodel.actor
    ids = torch.tensor([[3, 5, 7, 9]])

    def forward_backward():
        logits = actor(input_ids=ids).logits
        logits.float().sum().backward()
        return logits

    logits = in_compute_dtype(actor, trainer.precision, forward_backward)
    assert logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in actor.parameters())  # the masters are back in place
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in actor.parameters())
    reference = frozen_copy(actor, torch.bfloat16)(input_ids=ids).logits  # a bf16 copy computes the same logits
    torch.testing.assert_close(logits, reference, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_gradient_checkpointing_gives_the_gradients_of_a_plain_backward(tiny_model_dir, dtype):
    """Checkpointing recomputes each layer in the backward: under mixed precision the recompute must see the
    same compute-dtype weights as the forward (torch raises CheckpointError otherwise), and the gradients are
    those of the plain backward, bit for bit (the same ops on the same values)."""
    grads = {}
    for checkpointing in (False, True):
        trainer = make_trainer(tiny_model_dir, dtype=dtype, gradient_checkpointing=checkpointing, kl_coef=0.1)
        assert trainer.trimodel.actor.is_gradient_checkpointing == checkpointing
        trainer.accumulate(random_groups(3, 4, trainer.trimodel.actor.config.vocab_size))
        grads[checkpointing] = {n: p.grad.clone() for n, p in trainer.trimodel.actor.named_parameters()}
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=0, atol=0, msg=name)


def test_frozen_copy_keeps_rotary_frequencies_in_float32_and_computes_the_actors_function(tiny_model_dir):
    """The reference and the colocated rollout copy are frozen bf16 copies: their logits must be the actor's
    bf16 forward's, far into the sequence (a bf16 inv_freq rotates ~1 rad off near position 1000)."""
    trainer = make_trainer(tiny_model_dir, dtype="bfloat16", layout="expanded")
    actor = trainer.trimodel.actor
    copied = frozen_copy(actor, torch.bfloat16)
    assert {b.dtype for b in copied.buffers()} == {b.dtype for b in actor.buffers()} == {torch.float32}
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in copied.parameters())
    ids = torch.randint(1, actor.config.vocab_size, (1, 24))
    positions = torch.arange(1000, 1024)[None]  # where a bf16 inv_freq's phase error is large
    with torch.no_grad():
        actor_logits = in_compute_dtype(actor, trainer.precision,
                                        lambda: actor(input_ids=ids, position_ids=positions).logits)
        copy_logits = copied(input_ids=ids, position_ids=positions).logits
    torch.testing.assert_close(copy_logits, actor_logits, rtol=0, atol=0)


def test_bf16_reference_gives_zero_kl_before_the_first_step(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir, dtype="bfloat16", gradient_checkpointing=True, kl_coef=0.1)
    trainer.accumulate(random_groups(3, 4, trainer.trimodel.actor.config.vocab_size))
    assert trainer.step()["policy/kl"] == 0.0  # the same bf16 function of the same weights


def _float16_update(model_dir, micro_batch_size: int, init_scale: float | None = None, seed: int = 0):
    """One float16 iteration on fixed groups: (metrics, the parameter update in float32)."""
    trainer = make_trainer(model_dir, dtype="float16", expected_normaliser=6 * 4 * 8)
    if init_scale is not None:
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    actor = trainer.trimodel.actor
    before = {n: p.detach().clone() for n, p in actor.named_parameters()}
    for batch in micro_batches(random_groups(6, 4, actor.config.vocab_size, seed=seed), micro_batch_size):
        trainer.accumulate(batch)
    metrics = trainer.step()
    return metrics, {n: p.detach() - before[n] for n, p in actor.named_parameters()}


def test_float16_takes_its_step_at_the_default_scale_whatever_the_micro_batch_size(tiny_model_dir):
    for size in (4, 24):
        metrics, update = _float16_update(tiny_model_dir, size)
        assert metrics["optim/skipped_steps"] == 0 and metrics["optim/loss_scale"] == 2.0 ** 16
        assert all(torch.isfinite(u).all() for u in update.values())
        assert sum(int((u != 0).sum()) for u in update.values()) > 0.5 * sum(u.numel() for u in update.values())


def test_a_float16_overflow_lowers_the_scale_and_replays_instead_of_losing_the_step(tiny_model_dir):
    """At a scale of 2^24 the scaled float16 gradients overflow: the mini-batch is replayed at halved scales
    until they fit, and the step taken is the one the default scale takes (scaling by powers of two is exact
    unless a value leaves float16's range, so nearly every parameter's update is the same bits)."""
    metrics, update = _float16_update(tiny_model_dir, 8, init_scale=2.0 ** 24)
    assert metrics["optim/skipped_steps"] > 0 and metrics["optim/loss_scale"] < 2.0 ** 24
    _, expected = _float16_update(tiny_model_dir, 8)
    changed = [name for name, u in update.items() if not torch.equal(u, expected[name])]
    assert len(changed) <= len(update) // 4, changed


def test_float16_gradients_do_not_depend_on_the_micro_batch_size(tiny_model_dir):
    grads = []
    for size in (4, 24):
        trainer = make_trainer(tiny_model_dir, dtype="float16", expected_normaliser=6 * 4 * 8)
        for batch in micro_batches(random_groups(6, 4, trainer.trimodel.actor.config.vocab_size), size):
            trainer.accumulate(batch)
        trainer.finalize_gradients()
        grads.append({n: p.grad.clone() for n, p in trainer.trimodel.actor.named_parameters()})
    bound = roundoff_bound(torch.float16, 6 * 4 * 20)  # each micro-batch's float16 sums are rounded on their own
    for name, grad in grads[1].items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert ((grads[0][name] - grad).abs().max() / scale).item() < bound, name


def test_bf16_checkpoint_exports_bf16_and_resumes_exactly(tiny_model_dir, tmp_path, monkeypatch):
    bf16 = {"model.dtype": "bfloat16"}
    run(small_config(tiny_model_dir, tmp_path / "a", **bf16))
    exported = final_weights(tmp_path / "a")
    assert all(t.dtype == torch.bfloat16 for t in exported.values())  # the HF export is in the model's dtype
    masters_a = torch.load(tmp_path / "a" / "runs" / "t" / "checkpoints" / "iter_000003" / "trainer_state.pt",
                           weights_only=False)["trainer"]["masters"]
    assert all(t.dtype == torch.float32 for t in masters_a.values())

    kill_in_third_iteration_then_resume(tiny_model_dir, tmp_path / "b", monkeypatch, **bf16)
    masters_b = torch.load(tmp_path / "b" / "runs" / "t" / "checkpoints" / "iter_000003" / "trainer_state.pt",
                           weights_only=False)["trainer"]["masters"]
    for name, tensor in masters_a.items():  # the float32 masters, not just their bf16 rounding, are equal
        torch.testing.assert_close(masters_b[name], tensor, rtol=0, atol=0)
    line = json.loads((tmp_path / "b" / "runs" / "t" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["policy/logprob_diff_max"] < 0.1  # bf16 rollout copy and bf16 trainer forward agree


def test_pure_bf16_parameters_lose_small_updates(tiny_model_dir):
    """The contrast the precision benchmark reports: bf16 masters round a 1e-6 AdamW step away."""
    trainer = make_trainer(tiny_model_dir, precision=Precision(torch.bfloat16, torch.bfloat16))
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e-6
    actor = trainer.trimodel.actor
    before = [p.detach().clone() for p in actor.parameters()]
    trainer.accumulate(random_groups(4, 4, actor.config.vocab_size))
    trainer.step()
    changed = torch.cat([(p.detach() != b).flatten() for p, b in zip(actor.parameters(), before)])
    assert changed.float().mean() < 0.5
