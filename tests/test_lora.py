"""model.lora (engine/lora.py): adapters on a frozen base, the reference as the adapters switched off, adapter-only
weight sync, peft-format checkpoints with exact resume, and the merged export."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft", reason="model.lora needs peft (pip install -e .[lora])")

from engine import metrics as M  # noqa: E402
from engine.cli import main as cadence  # noqa: E402
from engine.config import (AlgorithmConfig, ConfigError, LoraConfig, ModelConfig, OptimConfig,  # noqa: E402
                           RewardConfig, load_config)
from engine.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdaptersOff, apply_lora, default_targets,  # noqa: E402
                         trainable_bytes)
from engine.models import frozen_copy, load_causal_lm, load_tokenizer  # noqa: E402
from engine.precision import resolve_precision  # noqa: E402
from engine.rewards.composite import build_rewards  # noqa: E402
from engine.rollout.native import NativeRolloutEngine  # noqa: E402
from engine.trainer import Trainer  # noqa: E402
from engine.trimodel import TriModel  # noqa: E402
from helpers import random_groups  # noqa: E402

CPU = torch.device("cpu")


def lora_actor(model_dir, dtype=torch.float32, master=torch.float32, rank=4, targets=(), checkpointing=False):
    base = load_causal_lm(model_dir, ModelConfig(path=str(model_dir), gradient_checkpointing=checkpointing), CPU,
                          dtype=dtype)
    return apply_lora(base, LoraConfig(rank=rank, target_modules=list(targets)), model_dir, master)


def lora_trainer(model_dir, kl_coef=0.1, dtype="float32", lr=1e-2, checkpointing=False) -> Trainer:
    precision = resolve_precision(dtype, "cpu")
    tokenizer = load_tokenizer(model_dir, ModelConfig(path=str(model_dir)))
    actor = lora_actor(model_dir, precision.compute, precision.master, checkpointing=checkpointing)
    trimodel = TriModel(actor, AdaptersOff(actor) if kl_coef > 0 else None, build_rewards(RewardConfig()),
                        decode=tokenizer.decode, temperature=1.0, layout="expanded", pad_id=tokenizer.pad_token_id,
                        precision=precision)
    return Trainer(trimodel, AlgorithmConfig(kl_coef=kl_coef), OptimConfig(lr=lr), CPU)


def randomise_b(actor, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in actor.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)


def test_default_targets_are_every_attention_and_mlp_projection(tiny_model_dir):
    base = load_causal_lm(tiny_model_dir, ModelConfig(path=str(tiny_model_dir)), CPU)
    assert sorted(default_targets(base)) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"])


def test_reference_with_adapters_off_equals_the_base_models_logprobs(tiny_model_dir):
    actor = lora_actor(tiny_model_dir, dtype=torch.float64, master=torch.float64)
    randomise_b(actor)  # adapters that change the policy, so "off" is tested, not "zero"
    base = load_causal_lm(tiny_model_dir, ModelConfig(path=str(tiny_model_dir)), CPU, dtype=torch.float64)
    ids = torch.tensor([[3, 17, 42, 9, 11, 5, 60, 2]])
    with torch.no_grad():
        ref = torch.log_softmax(AdaptersOff(actor)(input_ids=ids).logits, -1)
        plain = torch.log_softmax(base(input_ids=ids).logits, -1)
        adapted = torch.log_softmax(actor(input_ids=ids).logits, -1)
    torch.testing.assert_close(ref, plain, rtol=0, atol=0)
    assert (adapted - plain).abs().max() > 1e-3  # the adapters were on again after the reference forward


def test_zero_initialised_b_starts_with_kl_zero_and_the_actor_equal_to_the_reference(tiny_model_dir):
    trainer = lora_trainer(tiny_model_dir, kl_coef=0.1)
    groups = random_groups(2, 4, vocab=50)
    with torch.no_grad():
        out = trainer.trimodel.forward(groups, CPU)
    torch.testing.assert_close(out.logp_N, out.ref_logp_N, rtol=0, atol=0)
    trainer.accumulate(groups)
    metrics = trainer.step()
    assert metrics[M.KL] == 0.0
    grads = [p.grad for n, p in trainer.trimodel.actor.named_parameters() if ".lora_" in n]
    assert all(p.grad is None for n, p in trainer.trimodel.actor.named_parameters() if ".lora_" not in n)
    assert grads  # the step happened on the adapters only (zero_grad cleared them): B moved off zero
    b = [p for n, p in trainer.trimodel.actor.named_parameters() if ".lora_B." in n]
    assert any(p.abs().max() > 0 for p in b)
    with torch.no_grad():  # after the step the actor has moved away from the reference: KL > 0
        out = trainer.trimodel.forward(random_groups(2, 4, vocab=50, version=1), CPU)
    assert (out.logp_N - out.ref_logp_N).abs().max() > 0


def test_a_lora_sync_hands_over_exactly_the_adapters_bytes(tiny_model_dir):
    trainer = lora_trainer(tiny_model_dir, kl_coef=0.0)
    actor = trainer.trimodel.actor
    sent = list(trainer.rollout_weights())
    assert sent and all(".lora_A." in n or ".lora_B." in n for n, _ in sent)
    assert trainer.sync_bytes == trainable_bytes(actor) == sum(t.numel() * t.element_size() for _, t in sent)
    full = sum(p.numel() * p.element_size() for p in actor.parameters())
    assert trainer.sync_bytes < 0.5 * full
    trainer.accumulate(random_groups(2, 4, vocab=50))
    assert trainer.step()[M.SYNC_BYTES] == trainer.sync_bytes


def test_under_bf16_the_base_is_compute_dtype_the_adapters_float32_and_the_rollout_copy_gets_only_them(
        tiny_model_dir):
    trainer = lora_trainer(tiny_model_dir, kl_coef=0.1, dtype="bfloat16")
    actor = trainer.trimodel.actor
    assert {p.dtype for p in actor.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in actor.parameters() if not p.requires_grad} == {torch.bfloat16}
    copy = frozen_copy(actor, torch.bfloat16, share_frozen=True)
    shared = {p.data_ptr() for p in actor.parameters() if not p.requires_grad}
    assert shared <= {p.data_ptr() for p in copy.parameters()}  # the base is not duplicated
    trainer.accumulate(random_groups(2, 4, vocab=50))
    trainer.step()
    engine = NativeRolloutEngine(copy, eos_token_id=1, pad_token_id=0, device=CPU)
    engine.load_weights(trainer.rollout_weights(), trainer.version)
    names = dict(copy.named_parameters())
    for name, p in actor.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(names[name], p.detach().to(torch.bfloat16), rtol=0, atol=0)
    ids = torch.tensor([[3, 17, 42, 9]])
    with torch.no_grad():  # the rollout copy computes what the trainer's compute-dtype forward computes
        from engine.precision import in_compute_dtype
        trained = in_compute_dtype(actor, trainer.precision, lambda: actor(input_ids=ids).logits)
        torch.testing.assert_close(copy(input_ids=ids).logits, trained, rtol=0, atol=0)


def test_gradient_checkpointing_gives_the_adapters_the_same_gradients(tiny_model_dir):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same A (Kaiming-uniform from torch's generator) in both
        trainer = lora_trainer(tiny_model_dir, kl_coef=0.1, checkpointing=checkpointing)
        randomise_b(trainer.trimodel.actor)  # B != 0, so A gets a gradient too
        trainer.accumulate(random_groups(2, 4, vocab=50))
        grads.append({n: p.grad.clone() for n, p in trainer.trimodel.actor.named_parameters() if p.requires_grad})
    assert grads[0] and set(grads[0]) == set(grads[1])
    for name, grad in grads[0].items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7)  # recompute reorders float32 sums


def test_config_errors_name_the_key(tiny_model_dir):
    with pytest.raises(ConfigError, match="model.lora.dropout"):
        LoraConfig(rank=8, dropout=0.1)
    with pytest.raises(ConfigError, match="model.lora.rank"):
        LoraConfig(rank=-1)
    with pytest.raises(ConfigError, match="only read with model.lora.rank > 0"):
        LoraConfig(target_modules=["q_proj"])
    with pytest.raises(ConfigError, match=r"model.lora.target_modules: \['qkv'\] name no linear layer"):
        lora_actor(tiny_model_dir, targets=["q_proj", "qkv"])
    with pytest.raises(ConfigError, match="model.lora.rank: vLLM serves LoRA adapters up to rank 512, got 513"):
        load_config(None, ["model.path=x", "model.lora.rank=513", "rollout.engine=vllm"])
    load_config(None, ["model.path=x", "model.lora.rank=512", "rollout.engine=vllm"])  # vLLM LoRA requests
    with pytest.raises(ConfigError, match="model.lora.rnak: unknown key"):
        load_config(None, ["model.path=x", "model.lora.rnak=8"])


# ---------------------------------------------------------------------------------------------- whole runs
def even_length_reward(completion: str, reference: str) -> float:
    """1 for a completion of even length: the miniature model never answers right, and the runs below need
    unequal rewards in a group, so that the adapters train."""
    return float(len(completion) % 2 == 0)


LORA_RUN = {"model.lora.rank": 4, "algorithm.kl_coef": 0.05, "reward.functions": "[test_lora:even_length_reward]"}


def lora_config(model_dir, tmp_path, **extra):
    from test_controller import small_config

    return small_config(model_dir, tmp_path, **{**LORA_RUN, **extra})


def adapter_of(tmp_path, iteration=3):
    from safetensors.torch import load_file

    return load_file(str(tmp_path / "runs" / "t" / "checkpoints" / f"iter_{iteration:06d}" / ADAPTER_WEIGHTS))


@pytest.mark.slow
def test_a_killed_lora_run_resumes_to_the_same_adapter(tiny_model_dir, tmp_path, monkeypatch):
    from engine.train import run
    from test_controller import kill_in_third_iteration_then_resume

    run(lora_config(tiny_model_dir, tmp_path / "a"))
    uninterrupted = adapter_of(tmp_path / "a")
    kill_in_third_iteration_then_resume(tiny_model_dir, tmp_path / "b", monkeypatch, **LORA_RUN)
    resumed = adapter_of(tmp_path / "b")
    assert uninterrupted and set(resumed) == set(uninterrupted)
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0)
    assert any(t.abs().max() > 0 for n, t in uninterrupted.items() if "lora_B" in n)  # it trained


@pytest.mark.slow
def test_a_lora_run_checkpoints_a_peft_folder_logs_sync_bytes_and_exports_merged(tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    from transformers import AutoModelForCausalLM

    from engine import checkpoint
    from engine.train import run

    run(lora_config(tiny_model_dir, tmp_path, **{"run.iterations": 2}))
    run_dir = tmp_path / "runs" / "t"
    ckpt = run_dir / "checkpoints" / "iter_000002"
    assert (ckpt / ADAPTER_CONFIG).is_file() and (ckpt / ADAPTER_WEIGHTS).is_file()
    assert not (ckpt / "model.safetensors").exists()  # the base is never written again
    assert json.loads((ckpt / ADAPTER_CONFIG).read_text())["r"] == 4
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    actor = lora_actor(tiny_model_dir)
    assert [line[M.SYNC_BYTES] for line in lines] == [trainable_bytes(actor)] * 2

    # as in a fresh process: the checkpoint is verified from its manifest, not from this process's memory of it
    monkeypatch.setattr(checkpoint, "_verified", {})
    checkpoint.verify_checkpoint(ckpt)
    out = tmp_path / "merged"
    assert cadence(["export", str(ckpt), "--out", str(out), "--merge"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    from engine.lora import load_adapter
    load_adapter(ckpt, actor)
    ids = torch.tensor([[3, 17, 42, 9, 11]])
    with torch.no_grad():
        bound = 1e-4  # merging W + s B A in float32 rounds differently from adding s B (A x) to W x
        torch.testing.assert_close(merged(input_ids=ids).logits, actor(input_ids=ids).logits, rtol=bound, atol=bound)
    assert cadence(["export", str(ckpt), "--out", str(tmp_path / "x")]) == 2  # an adapter needs --merge


@pytest.mark.slow
def test_a_split_rollout_worker_gets_the_adapters_alone_and_trains_what_the_colocated_engine_trains(
        tiny_model_dir, tmp_path):
    """The fleet's worker builds the same adapters over its own base copy and receives only them each sync; in
    float64 with run.deterministic its samples are the colocated engine's, so the adapters end equal bit for bit."""
    from engine.train import run

    exact = {"model.dtype": "float64", "run.deterministic": "true"}
    run(lora_config(tiny_model_dir, tmp_path / "colocated", **exact))
    run(lora_config(tiny_model_dir, tmp_path / "split", **exact, **{"pipeline.placement": "split"}))
    colocated, split = adapter_of(tmp_path / "colocated"), adapter_of(tmp_path / "split")
    for name, tensor in colocated.items():
        torch.testing.assert_close(split[name], tensor, rtol=0, atol=0)
    lines = {where: [json.loads(line) for line in (tmp_path / where / "runs" / "t" / "metrics.jsonl")
                     .read_text().splitlines()][1:] for where in ("colocated", "split")}
    adapter_bytes = trainable_bytes(lora_actor(tiny_model_dir, torch.float64, torch.float64))
    assert [line[M.SYNC_BYTES] for line in lines["split"]] == [adapter_bytes] * 3
    # the worker's log-probs of its samples are the colocated engine's: it samples the trained policy
    assert [line[M.LOGPROB_DIFF_MAX] for line in lines["split"]] == [line[M.LOGPROB_DIFF_MAX]
                                                                      for line in lines["colocated"]]
