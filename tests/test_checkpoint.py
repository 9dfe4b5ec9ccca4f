"""Checkpoints: round trip, Hugging Face loading, corruption detection, tmp leftovers, pruning."""
from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from backends.cpu.backend import CpuBackend
from engine import checkpoint as C

_CHARS = list("0123456789+-=# abcdefghijklmnopqrstuvwxyz?:\n")


def tiny_model(seed: int, tied: bool = True, hidden: int = 32) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=64, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied)
    return Qwen2ForCausalLM(cfg)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(["<unk>", "<eos>", *_CHARS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def trained(seed: int = 0, tied: bool = True):
    """A tiny model, its AdamW and LR schedule after one step, so the optimizer has state to save."""
    model = tiny_model(seed, tied)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    step(model, optimizer, scheduler)
    return model, optimizer, scheduler


def step(model, optimizer, scheduler) -> None:
    ids = torch.arange(12).reshape(2, 6) % 64
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def save(root, iteration, model, optimizer=None, scheduler=None, tokenizer=None, **extra):
    optimizer = optimizer or torch.optim.AdamW(model.parameters())
    state = C.make_trainer_state(iteration=iteration, policy_version=iteration, optimizer=optimizer,
                                 scheduler=scheduler, data_state={"cursor": 7 * iteration}, backend=CpuBackend(),
                                 extra=extra)
    return C.save_checkpoint(root, iteration, model, tokenizer, state)


def draws() -> tuple:
    return random.random(), torch.rand(3).tolist(), np.random.rand(2).tolist()


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_restores_weights_optimizer_and_rng(tmp_path, tied):
    model, optimizer, scheduler = trained(0, tied)
    path = save(tmp_path, 3, model, optimizer, scheduler, tiny_tokenizer(), note="hi")
    expected_draws = draws()

    fresh, fresh_opt, fresh_sched = trained(1, tied)  # different weights and optimizer moments
    state = C.load_trainer_state(path)
    C.load_model_weights(path, fresh)
    C.restore_trainer_state(state, optimizer=fresh_opt, scheduler=fresh_sched, backend=CpuBackend())

    assert draws() == expected_draws  # the next random numbers are the ones the saved run would have drawn
    assert (state["iteration"], state["policy_version"], state["data"], state["extra"]) == (3, 3, {"cursor": 21},
                                                                                          {"note": "hi"})
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert fresh_sched.state_dict() == scheduler.state_dict()
    # One more identical step on both gives identical weights: the optimizer state came back whole.
    step(model, optimizer, scheduler)
    step(fresh, fresh_opt, fresh_sched)
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_is_a_hugging_face_folder(tmp_path):
    model = tiny_model(0)
    path = save(tmp_path, 1, model, tokenizer=tiny_tokenizer())
    assert path.name == "iter_000001" and (path / C.MANIFEST_FILE).is_file()
    loaded = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits)


def test_truncated_weights_are_rejected_and_latest_falls_back(tmp_path):
    model = tiny_model(0)
    first = save(tmp_path, 1, model)
    second = save(tmp_path, 2, model)
    weights = second / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    with pytest.raises(C.CheckpointError, match="model.safetensors is truncated"):
        C.load_trainer_state(second)
    with pytest.raises(C.CheckpointError, match="model.safetensors"):
        C.load_model_weights(second, tiny_model(1))
    with pytest.warns(C.CheckpointWarning, match="iter_000002"):
        assert C.latest_checkpoint(tmp_path) == first


def test_flipped_byte_and_missing_files_are_rejected(tmp_path):
    path = save(tmp_path, 1, tiny_model(0))
    state_file = path / C.TRAINER_STATE_FILE
    data = bytearray(state_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state_file.write_bytes(bytes(data))
    with pytest.raises(C.CheckpointError, match="trainer_state.pt is corrupt"):
        C.load_trainer_state(path)
    (path / "config.json").unlink()
    with pytest.raises(C.CheckpointError, match="config.json is missing"):
        C.verify_checkpoint(path)
    (path / C.MANIFEST_FILE).unlink()
    with pytest.raises(C.CheckpointError, match="manifest.json is missing"):
        C.verify_checkpoint(path)
    with pytest.warns(C.CheckpointWarning):
        assert C.latest_checkpoint(tmp_path) is None


def test_leftover_tmp_dir_is_ignored_then_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    stale = tmp_path / f"iter_000009.tmp-{dead_pid}"
    live = tmp_path / f"iter_000009.tmp-{os.getppid()}"  # a running process may still be writing it
    first = save(tmp_path, 1, tiny_model(0))
    for leftover in (stale, live):
        leftover.mkdir()
        (leftover / "config.json").write_text("{}")
    with pytest.warns(C.CheckpointWarning, match="unfinished"):
        assert C.latest_checkpoint(tmp_path) == first
    save(tmp_path, 2, tiny_model(0))
    assert not stale.exists() and live.exists()


def test_prune_keeps_the_newest_valid(tmp_path):
    model = tiny_model(0)
    for k in (1, 2, 3, 4):
        save(tmp_path, k, model)
    (tmp_path / "iter_000004" / C.MANIFEST_FILE).unlink()  # broken: never counts as a kept one
    removed = C.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == ["iter_000001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_000002", "iter_000003", "iter_000004"]
    assert C.prune_checkpoints(tmp_path, keep=0) == []


def test_resaving_an_iteration_replaces_it(tmp_path):
    save(tmp_path, 1, tiny_model(0))
    path = save(tmp_path, 1, tiny_model(1), note="second")
    assert C.load_trainer_state(path)["extra"] == {"note": "second"}
    assert [p.name for p in tmp_path.iterdir()] == ["iter_000001"]


def test_bad_state_fails_at_save_time(tmp_path):
    model = tiny_model(0)
    with pytest.raises(TypeError, match=r"state\['extra'\]\['when'\]"):
        save(tmp_path, 1, model, when=object())
    with pytest.raises(ValueError, match="iteration"):
        C.save_checkpoint(tmp_path, 2, model, None, {"iteration": 1})
    assert list(tmp_path.iterdir()) == []


def test_weights_of_another_model_are_refused(tmp_path):
    path = save(tmp_path, 1, tiny_model(0, hidden=32))
    with pytest.raises(C.CheckpointError, match="does not fit"):
        C.load_model_weights(path, tiny_model(0, hidden=64))
    with pytest.raises(C.CheckpointError, match="missing from the checkpoint"):
        C.load_model_weights(path, tiny_model(0, tied=False))


def test_snapshot_is_a_frozen_copy_that_keeps_ties():
    model, optimizer, _ = trained(0, tied=True)
    frozen = C.snapshot({"model": model.state_dict(), "optim": optimizer.state_dict()})
    weights = frozen["model"]
    assert weights["lm_head.weight"] is weights["model.embed_tokens.weight"]  # tied: still one tensor
    before = {name: tensor.clone() for name, tensor in weights.items()}
    moment = frozen["optim"]["state"][0]["exp_avg"].clone()
    step(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0))  # changes the originals
    assert all(torch.equal(weights[name], tensor) for name, tensor in before.items())
    assert torch.equal(frozen["optim"]["state"][0]["exp_avg"], moment)


def test_background_writer_writes_the_snapshot_while_training_goes_on(tmp_path):
    model, optimizer, scheduler = trained(0)
    expected = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    writer = C.CheckpointWriter(tmp_path, model, tiny_tokenizer(), keep=1)
    state = C.make_trainer_state(iteration=1, policy_version=1, optimizer=optimizer, scheduler=scheduler,
                                 data_state={"cursor": 7}, backend=CpuBackend())
    writer.submit(1, C.snapshot(model.state_dict()), C.snapshot(state))
    step(model, optimizer, scheduler)  # the next iteration, while the write may still run
    writer.submit(2, C.snapshot(model.state_dict()), C.snapshot({**state, "iteration": 2}))
    writer.wait()
    assert [p.name for p in tmp_path.iterdir()] == ["iter_000002"]  # written in order, then pruned to keep=1
    fresh = tiny_model(1)
    C.load_model_weights(C.latest_checkpoint(tmp_path), fresh)
    assert all(torch.equal(fresh.state_dict()[name], model.state_dict()[name]) for name in expected)
    assert not all(torch.equal(fresh.state_dict()[name], expected[name]) for name in expected)  # not iteration 1


def test_background_write_errors_reach_the_caller(tmp_path):
    model = tiny_model(0)
    (tmp_path / "file").write_text("not a folder")
    writer = C.CheckpointWriter(tmp_path / "file" / "ckpts", model, None, keep=1)
    writer.submit(1, C.snapshot(model.state_dict()), {"iteration": 1})
    with pytest.raises(C.CheckpointError, match="writing a checkpoint failed"):
        writer.wait()
    writer.wait()  # reported once
    with pytest.raises(TypeError, match="cannot be stored"):
        writer.submit(2, {}, {"iteration": 2, "bad": object()})
