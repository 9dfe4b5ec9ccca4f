"""Mixed precision: float32 masters and optimizer state, compute-dtype forwards, exact resume under bf16."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine.precision import Precision, cast_forward, resolve_precision
from engine.train import run
from helpers import make_trainer, random_groups
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


def test_cast_forward_computes_in_the_compute_dtype_and_returns_float32_gradients(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir, dtype="bfloat16", layout="expanded")
    actor = trainer.trimodel.actor
    ids = torch.tensor([[3, 5, 7, 9]])
    out = cast_forward(actor, trainer.precision, input_ids=ids)
    assert out.logits.dtype == torch.bfloat16
    out.logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in actor.parameters())
    reference = actor.to(torch.bfloat16)(input_ids=ids).logits  # a plain bf16 model computes the same logits
    torch.testing.assert_close(out.logits, reference, rtol=0, atol=0)


def test_float16_trains_with_dynamic_loss_scaling(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir, dtype="float16")
    trainer.accumulate(random_groups(2, 4, trainer.trimodel.actor.config.vocab_size))
    metrics = trainer.step()
    assert metrics["optim/loss_scale"] > 0 and "scaler" in trainer.state_dict()
    assert all(torch.isfinite(p).all() for p in trainer.trimodel.actor.parameters())


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
