"""LoRA under torchrun (engine/parallel/lora.py; named apart from tests/test_lora.py, whose reward it uses):
FSDP2 shards the float32 adapters over a whole compute-dtype base; 2 ranks train the adapters one process
trains, sync them alone, checkpoint them as a peft folder plus dcp/, and resume.

The runs are in float64 (as tests/parallel/test_spmd.py), so the only difference between 2 ranks and one plain
process is the order in which gradients are summed.
"""
from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("peft", reason="model.lora needs peft (pip install -e .[lora])")

from engine.config import LoraConfig, ModelConfig  # noqa: E402
from engine.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdaptersOff, trainable_parameters  # noqa: E402
from engine.models import load_causal_lm  # noqa: E402
from engine.precision import resolve_precision  # noqa: E402
from test_spmd import RTOL, _free_port, _overrides, launch  # noqa: E402

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parents[1]
# the miniature model never answers right: test_lora's reward (even completion length) makes the groups unequal
LORA_RUN = {"model.lora.rank": 4, "algorithm.kl_coef": 0.05, "reward.functions": "[test_lora:even_length_reward]",
            "run.deterministic": "true", "rollout.prompts_per_iteration": 6, "rollout.max_batch_sequences": 8}


def _rank(rank: int, world: int, port: int, model_dir: str, errors) -> None:
    """One gloo rank: build the sharded LoRA actor in bfloat16 and check the contract."""
    from torch.distributed.tensor import DTensor

    from engine.parallel.lora import load_sharded_lora_actor

    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world)
        torch.manual_seed(rank)  # unlike seeds: the ranks' adapters agree only through the broadcast
        cfg = ModelConfig(path=model_dir, lora=LoraConfig(rank=4))
        precision = resolve_precision("bfloat16", "cpu")
        actor, sharded, rollout = load_sharded_lora_actor(Path(model_dir), cfg, torch.device("cpu"), precision,
                                                          False, prepare=lambda m: None, rollout_copy=True)
        assert sharded.sharded
        adapters = dict(trainable_parameters(actor))
        assert adapters and all(isinstance(p, DTensor) and p.dtype == torch.float32 for p in adapters.values())
        base = [p for p in actor.parameters() if not p.requires_grad]
        assert base and all(not isinstance(p, DTensor) and p.dtype == torch.bfloat16 for p in base)
        # every rank's adapters are rank 0's
        for name, p in adapters.items():
            full = p.full_tensor()
            gathered = [torch.empty_like(full) for _ in range(world)]
            dist.all_gather(gathered, full)
            assert all(torch.equal(g, gathered[0]) for g in gathered), name
        # the rollout copy: the actor's base tensors themselves, compute-dtype adapters of the same names
        rollout_params = dict(rollout.named_parameters())
        for (name, p) in actor.named_parameters():
            if not p.requires_grad:
                assert rollout_params[name].data_ptr() == p.data_ptr(), name
            else:
                assert rollout_params[name].dtype == torch.bfloat16, name
        # the reference may run before the actor's first forward: peft's switch clears the adapters'
        # requires_grad while it is off, which FSDP2 must not take for "frozen"
        with torch.no_grad():
            AdaptersOff(actor)(input_ids=torch.ones(1, 3, dtype=torch.long))
        actor(input_ids=torch.ones(1, 3, dtype=torch.long)).logits.float().sum().backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in adapters.values())  # float32 reduction
        # adapters off = the base, bit for bit, after B has moved off 0
        with torch.no_grad():
            for name, p in adapters.items():
                if "lora_B" in name:
                    p.to_local().normal_(generator=torch.Generator().manual_seed(rank))
        plain = load_causal_lm(Path(model_dir), ModelConfig(path=model_dir), torch.device("cpu"), dtype=torch.bfloat16)
        ids = torch.randint(1, plain.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            on = actor(input_ids=ids).logits
            off = AdaptersOff(actor)(input_ids=ids).logits
            base_logits = plain(input_ids=ids).logits
        assert off.dtype == torch.bfloat16 and torch.equal(off, base_logits)
        assert not torch.equal(on, base_logits)  # the adapters do act
        assert all(p.requires_grad for p in adapters.values())  # switched back on after the reference
        dist.destroy_process_group()
    except BaseException:
        errors.put(f"rank {rank}: {traceback.format_exc()}")
        raise


def test_sharded_adapters_are_float32_over_a_whole_bf16_base_and_adapters_off_is_the_base(tiny_model_dir):
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, str(tiny_model_dir), errors)) for r in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(300)
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    assert not messages, "\n".join(messages)
    assert all(proc.exitcode == 0 for proc in procs)


def adapter(out: Path, iteration: int = 3) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "t" / "checkpoints" / f"iter_{iteration:06d}" / ADAPTER_WEIGHTS))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a and a.keys() == b.keys()
    for name in a:
        scale = b[name].abs().max().clamp_min(1e-12)
        assert ((a[name] - b[name]).abs().max() / scale).item() < RTOL, name


def plain_run(model_dir, out: Path, **extra) -> None:
    from engine.config import load_config
    from engine.train import run

    run(load_config(None, _overrides(model_dir, out, **{**LORA_RUN, **extra})))


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "t" / "metrics.jsonl").read_text().splitlines()]


# colocated: each rank's engine is synced the gathered adapters; split: one rollout worker gets them by transport
PLACEMENTS = {"colocated": ({}, 2), "split": ({"pipeline.placement": "split"}, 1)}


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_two_ranks_train_the_adapters_one_process_trains_and_sync_them_alone(tiny_model_dir, tmp_path, placement):
    extra, engines = PLACEMENTS[placement]
    plain_run(tiny_model_dir, tmp_path / "plain")  # colocated: tests/test_lora.py has split = colocated in one process
    launch(2, _overrides(tiny_model_dir, tmp_path / "two", **LORA_RUN, **extra), tmp_path / "logs", pythonpath=(TESTS,))
    two, plain = adapter(tmp_path / "two"), adapter(tmp_path / "plain")
    assert_close(two, plain)
    assert any(t.abs().max() > 0 for n, t in two.items() if "lora_B" in n)  # it trained
    adapter_bytes = sum(t.numel() * 8 for t in plain.values())  # float64
    trained = [line for line in metrics(tmp_path / "two") if line["iteration"] > 0]
    assert [line["sync/bytes"] for line in trained] == [adapter_bytes] * 3
    assert [line["rollout/engines"] for line in trained] == [engines] * 3
    folder = tmp_path / "two" / "t" / "checkpoints" / "iter_000003"
    assert (folder / ADAPTER_CONFIG).is_file() and (folder / "dcp" / ".metadata").is_file()
    assert not (folder / "model.safetensors").exists()  # the base is never written again


@pytest.mark.parametrize("resume_ranks", [2, 1])
def test_a_two_rank_lora_run_resumes_to_the_adapters_of_the_uninterrupted_run_and_exports_merged(
        tiny_model_dir, tmp_path, resume_ranks):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine.cli import main as cadence

    plain_run(tiny_model_dir, tmp_path / "plain")
    cut = tmp_path / "cut"
    launch(2, _overrides(tiny_model_dir, cut, **{**LORA_RUN, "run.iterations": 2}), tmp_path / "l1", pythonpath=(TESTS,))
    launch(resume_ranks, _overrides(tiny_model_dir, cut, **{**LORA_RUN, "run.resume": "true"}), tmp_path / "l2",
           pythonpath=(TESTS,))  # dcp/ reshards the adapters' masters and AdamW state
    assert_close(adapter(cut), adapter(tmp_path / "plain"))
    assert [line["iteration"] for line in metrics(cut)] == [0, 1, 2, 3]  # nothing lost, nothing replayed
    folder = cut / "t" / "checkpoints" / "iter_000003"
    assert cadence(["export", str(folder), "--out", str(tmp_path / "merged"), "--merge"]) in (0, None)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    expected = PeftModel.from_pretrained(base, folder).merge_and_unload().state_dict()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float64).state_dict()
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-6, atol=1e-6)  # stored in the base's float32


def test_a_bfloat16_two_rank_lora_run_keeps_float32_adapter_masters_and_no_base_in_dcp(tiny_model_dir, tmp_path):
    from torch.distributed.checkpoint import FileSystemReader

    out = tmp_path / "bf16"
    launch(2, _overrides(tiny_model_dir, out, **{**LORA_RUN, "model.dtype": "bfloat16", "run.iterations": 2}),
           tmp_path / "logs", pythonpath=(TESTS,))
    exported = adapter(out, iteration=2)
    assert all(t.dtype == torch.bfloat16 for t in exported.values())  # the export is in the compute dtype
    assert any(t.abs().max() > 0 for n, t in exported.items() if "lora_B" in n)  # it trained
    stored = FileSystemReader(str(out / "t" / "checkpoints" / "iter_000002" / "dcp")).read_metadata()
    masters = {k: v for k, v in stored.state_dict_metadata.items() if k.startswith("model.")}
    assert masters and all(".lora_" in k and v.properties.dtype == torch.float32 for k, v in masters.items())
    trained = [line for line in metrics(out) if line["iteration"] > 0]
    assert [line["sync/bytes"] for line in trained] == [sum(t.numel() * 2 for t in exported.values())] * 2
