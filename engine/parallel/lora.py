"""LoRA under torchrun: float32 adapters sharded by FSDP2 over a frozen compute-dtype base every rank holds whole.

    every rank                                             (docs/lora.md, docs/scaling.md)
    from_pretrained(model.path) in the compute dtype on its device: the frozen base W
    apply_lora: float32 adapter masters A, B (engine/lora.py); rank 0's A is broadcast, so all ranks start alike
    colocated: the rollout copy = the same W (shared tensors, not copied) + compute-dtype copies of A, B
    fully_shard per decoder layer and at the root, W passed as `ignored_params`: FSDP2 shards, gathers, casts
      and reduces the adapters alone; W stays a plain tensor, whole on every rank

Why the base is replicated rather than sharded: colocated, every rank's rollout engine generates with the whole
base in the compute dtype anyway, and here it is the actor's own W (shared storage), so a sharded W would add
a second copy's worth of shards and an all-gather of frozen weights in every forward and backward, to save
nothing. What FSDP2 shards is what steps: the float32 masters, their gradients and AdamW state (the only
per-parameter state that is 12-16 bytes). Consequences: every rank reads model.path (one node, or a shared file
system, as checkpoints already need), and the trainer ranks of a split placement hold the whole base too (a
model whose compute-dtype base does not fit one device needs a sharded base: not built).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from engine.config import ModelConfig
from engine.lora import apply_lora, trainable_parameters
from engine.models import frozen_copy, load_causal_lm
from engine.parallel.fsdp import shard_actor
from engine.parallel.loading import Prepare
from engine.precision import Precision


def load_sharded_lora_actor(folder: Path, cfg: ModelConfig, device: torch.device, precision: Precision,
                            dropout: bool, prepare: Prepare,
                            rollout_copy: bool) -> tuple[nn.Module, Precision, nn.Module | None]:
    """The LoRA actor with FSDP2-sharded float32 adapters over a whole, frozen compute-dtype base; the precision
    the trainer then uses; and, with `rollout_copy`, this rank's rollout module: the same base tensors with
    compute-dtype adapters, which every weight sync overwrites (the adapters alone are synced)."""
    base = load_causal_lm(folder, cfg, device, dtype=precision.compute, dropout=dropout)
    actor = apply_lora(base, cfg.lora, folder, precision.master)
    prepare(actor)
    broadcast_adapters(actor)
    rollout = frozen_copy(actor, precision.compute, share_frozen=True) if rollout_copy else None
    frozen = {p for p in actor.parameters() if not p.requires_grad}
    sharded = shard_actor(actor, precision, ignored=frozen)
    settle_trainable(actor, device)
    return actor, sharded, rollout


def settle_trainable(actor: nn.Module, device: torch.device) -> None:
    """One no-grad forward with the adapters on, right after sharding. FSDP2 decides at its first forward which
    parameters train (their dtype and reduce dtype) and gives each gathered parameter the requires_grad of that
    moment. The reference (`AdaptersOff`) clears the adapters' requires_grad while it runs, so a reference forward
    first would leave FSDP2 taking the adapters for frozen: no float32 reduction, and bfloat16 gradients refused
    by the float32 masters (tested)."""
    with torch.no_grad():
        actor(input_ids=torch.ones(1, 1, dtype=torch.long, device=device), use_cache=False)


def broadcast_adapters(model: nn.Module) -> None:
    """Every rank's adapters become rank 0's (A is drawn at random; B is 0 everywhere), before sharding."""
    with torch.no_grad():
        for _, param in trainable_parameters(model):
            dist.broadcast(param.data, src=0)
