"""Large models start under FSDP2: rank 0 alone reads the weights, every rank keeps only its shards, and the
reference is sharded like the actor and computes the actor's compute-dtype function."""
from __future__ import annotations

import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.config import ModelConfig
from engine.models import frozen_copy, load_causal_lm
from engine.precision import resolve_precision
from test_spmd import _free_port

pytestmark = pytest.mark.slow


def _rank(rank: int, world: int, port: int, model_dir: str, errors) -> None:
    """One gloo rank: load sharded (rank 1 may not read the folder's weights), compare with a direct load."""
    import engine.parallel.loading as loading

    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world)
        if rank != 0:
            def no_reading(*args, **kwargs):
                raise AssertionError("a rank other than 0 read the weights")
            loading.load_causal_lm = no_reading  # this spawned process's own module
        cfg, precision = ModelConfig(path=model_dir, gradient_checkpointing=True), resolve_precision("bfloat16", "cpu")
        actor, sharded, full = loading.load_sharded_actor(model_dir, cfg, torch.device("cpu"), precision, False,
                                                          is_root=rank == 0, prepare=lambda model: None)
        assert sharded.sharded and (full is not None) == (rank == 0)
        reference = loading.sharded_reference(model_dir, cfg, torch.device("cpu"), actor, precision, lambda m: None)
        direct = load_causal_lm(model_dir, ModelConfig(path=model_dir), torch.device("cpu"))
        for (name, p), (_, q) in zip(actor.named_parameters(), direct.named_parameters(), strict=True):
            assert p.to_local().numel() < q.numel() or q.numel() < world, name  # a shard, not the whole
            assert torch.equal(p.full_tensor(), q), name
        for (name, b), (_, c) in zip(actor.named_buffers(), direct.named_buffers(), strict=True):
            assert torch.equal(b, c), name
        ids = torch.randint(1, direct.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            actor_logits = actor(input_ids=ids).logits  # FSDP2's bf16 forward of the float32 masters
            reference_logits = reference(input_ids=ids).logits
            copy_logits = frozen_copy(direct, torch.bfloat16)(input_ids=ids).logits
        assert actor_logits.dtype == reference_logits.dtype == torch.bfloat16
        assert torch.equal(reference_logits, actor_logits) and torch.equal(copy_logits, actor_logits)
        dist.destroy_process_group()
    except BaseException:
        errors.put(f"rank {rank}: {traceback.format_exc()}")
        raise


def test_rank_0_reads_the_weights_once_and_the_sharded_reference_computes_the_actors_function(tiny_model_dir):
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
