"""FSDP2 for the actor: float32 sharded masters, compute-dtype forward, one gradient reduction per iteration.

`shard_actor` applies `torch.distributed.fsdp.fully_shard` to each decoder layer (the classes the model lists
in `_no_split_modules`) and then to the root, with `MixedPrecisionPolicy(param_dtype=compute,
reduce_dtype=float32)`: the same contract as engine/precision.py's single-device `cast_forward`, carried out
by FSDP2 itself (parameters all-gathered and cast per layer for the forward, gradients reduce-scattered in
float32 into the sharded masters).

Gradient reduction: the trainer accumulates an iteration's micro-batches with gradient sync off, so each rank
sums its own gradients locally; at the step `FsdpGradSync.reduce` turns sync on and runs one zero-weight
backward, whose reduce-scatter carries the whole iteration's accumulated gradients. FSDP2 averages over
ranks; `mean_factor` lets the trainer turn the mean back into a sum.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import torch
from torch import nn

from engine.precision import Precision


class GradSync(Protocol):
    mean_factor: int  # the reduction divides by this (the world size); 1 when nothing is reduced

    def idle_backward(self, reference: nn.Module | None = None) -> None: ...

    def reduce(self) -> None: ...


class _LocalGradSync:
    """One process: gradients are already complete; no rank is ever idle."""

    mean_factor = 1

    def idle_backward(self, reference: nn.Module | None = None) -> None:
        raise RuntimeError("a single trainer process is never dealt an empty round")

    def reduce(self) -> None:
        return None


LOCAL_GRAD_SYNC = _LocalGradSync()


class FsdpGradSync:
    def __init__(self, model: nn.Module, world_size: int, device: torch.device) -> None:
        self.model = model
        self.mean_factor = world_size
        self._one_token = torch.zeros(1, 1, dtype=torch.long, device=device)
        model.set_requires_gradient_sync(False)

    def idle_backward(self, reference: nn.Module | None = None) -> None:
        """A one-token forward through every layer, backward with weight 0: the collectives without data. A
        sharded `reference` runs its forward in between, where a rank with data runs it (TriModel.forward)."""
        logits = self.model(input_ids=self._one_token, use_cache=False).logits
        if reference is not None:
            with torch.no_grad():
                reference(input_ids=self._one_token, use_cache=False)
        (logits.float().sum() * 0.0).backward()

    def reduce(self) -> None:
        self.model.set_requires_gradient_sync(True)
        try:
            self.idle_backward()
        finally:
            self.model.set_requires_gradient_sync(False)


def shard_actor(model: nn.Module, precision: Precision, ignored: set[nn.Parameter] | None = None) -> Precision:
    """Shard `model` in place over the default process group; return the precision the trainer then uses
    (FSDP2 casts, so `cast_forward` must not). `ignored`: parameters FSDP2 leaves whole and unmanaged on every
    rank (a LoRA base: engine/parallel/lora.py), neither sharded nor gathered nor cast."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=precision.compute, reduce_dtype=precision.master)
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers found to shard (_no_split_modules is "
                         f"{sorted(layer_classes)})")
    for layer in layers:
        fully_shard(layer, mp_policy=policy, ignored_params=ignored)
    fully_shard(model, mp_policy=policy, ignored_params=ignored)
    return dataclasses.replace(precision, sharded=True)
