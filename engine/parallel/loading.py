"""Large models start under FSDP2: the weights are read once, by rank 0, and each rank holds its shards only.

    rank 0                                            ranks 1..N-1
    from_pretrained on the host, master dtype         -
      (the colocated rollout copy is cast from it)
    ---------- every rank: the model on the meta device, fully_shard, to_empty(device) ----------
    set_model_state_dict(full state, broadcast_from_rank0): each tensor is broadcast, each rank keeps its shard
    buffers (rotary inv_freq: not in the state dict) broadcast from rank 0
    reference: the same structure and sharding in the compute dtype, its local shards cast from the actor's
      (no communication: both are sharded alike)

Per rank this holds the float32 shards (4 bytes / parameter / ranks) plus one tensor in flight, instead of the
whole float32 model on every rank before sharding; rank 0's host holds the full model while it broadcasts.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from engine.config import ModelConfig
from engine.models import empty_causal_lm, load_causal_lm
from engine.parallel.fsdp import shard_actor
from engine.precision import Precision

Prepare = Callable[[nn.Module], None]  # what the model needs before sharding (the attention kernel)


def load_sharded_actor(folder: Path, cfg: ModelConfig, device: torch.device, precision: Precision, dropout: bool,
                       is_root: bool, prepare: Prepare) -> tuple[nn.Module, Precision, nn.Module | None]:
    """The FSDP2-sharded actor, the precision the trainer then uses, and (rank 0 only, else None) the full
    model as read from the folder, on the host, for the copies rank 0 needs before it is dropped."""
    full = load_causal_lm(folder, cfg, torch.device("cpu"), dtype=precision.master, dropout=dropout) if is_root else None
    actor = empty_causal_lm(folder, cfg, dtype=precision.master, dropout=dropout)
    prepare(actor)
    sharded = shard_actor(actor, precision)
    actor.to_empty(device=device)
    _load_from_rank0(actor, full)
    return actor, sharded, full


def sharded_reference(folder: Path, cfg: ModelConfig, device: torch.device, actor: nn.Module, precision: Precision,
                      prepare: Prepare) -> nn.Module:
    """A frozen compute-dtype copy of the sharded `actor`, sharded like it: its local shards are the actor's
    cast, its buffers the actor's (so it computes the function the actor's compute-dtype forward does)."""
    no_checkpointing = ModelConfig(path=cfg.path, trust_remote_code=cfg.trust_remote_code)
    reference = empty_causal_lm(folder, no_checkpointing, dtype=precision.compute)
    prepare(reference)
    shard_actor(reference, Precision(compute=precision.compute, master=precision.compute))
    reference.to_empty(device=device)
    with torch.no_grad():
        for (name, ours), (_, theirs) in zip(reference.named_parameters(), actor.named_parameters(), strict=True):
            ours.to_local().copy_(theirs.to_local())
        for ours, theirs in zip(reference.buffers(), actor.buffers(), strict=True):
            ours.copy_(theirs)
    return reference.requires_grad_(False).eval()


def empty_rollout_copy(folder: Path, cfg: ModelConfig, device: torch.device, actor: nn.Module, dtype: torch.dtype,
                       prepare: Prepare) -> nn.Module:
    """A frozen, unsharded `dtype` model for a rank's own rollout engine: its parameters are left empty (every
    weight sync fills them from the gathered full tensors, before any generation), its buffers are the sharded
    `actor`'s (rotary inv_freq, broadcast from rank 0 at load), in their own dtype as rank 0's copy keeps them."""
    no_checkpointing = ModelConfig(path=cfg.path, trust_remote_code=cfg.trust_remote_code)
    model = empty_causal_lm(folder, no_checkpointing, dtype=dtype)
    prepare(model)
    model.to_empty(device=device)
    with torch.no_grad():
        for (name, ours), (_, theirs) in zip(model.named_buffers(), actor.named_buffers(), strict=True):
            ours.data = theirs.detach().clone()  # .data: the buffer takes the actor's dtype, not only its values
    return model.requires_grad_(False).eval()


def _load_from_rank0(model: nn.Module, full: nn.Module | None) -> None:
    """Fill the sharded, empty `model` from rank 0's `full` model (None on the other ranks): parameters by
    torch's broadcast-from-rank-0 state-dict load, then every buffer (persistent or not) by broadcast."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full.state_dict() if full is not None else {}, options=options)
    theirs = dict(full.named_buffers()) if full is not None else {}
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if full is not None:
                buffer.copy_(theirs[name])
            dist.broadcast(buffer, src=0)
