"""Mixed precision: float32 master parameters, forward/backward in the compute dtype (`model.dtype`).

The contract, on every backend and with any parallelism:

    master parameters, optimizer state   float32 (the update of a small lr survives; bf16 would round it away)
    forward / backward                   model.dtype (bfloat16 by default on accelerators)
    log-softmax, losses                  float32 (at least: float64 stays float64)
    gradients, their accumulation        float32, in the master parameters' .grad
    rollout side, reference model        model.dtype copies of the parameters (they never take a step); buffers
                                         (rotary frequencies) stay in the dtype the trainer's forward uses
    float16                              dynamic loss scaling (torch.amp.GradScaler), a loss normalised by a
                                         power of two near the token count (engine/trainer.py)

On one device `in_compute_dtype` realises it the way FSDP2's `MixedPrecisionPolicy(param_dtype=compute,
reduce_dtype=float32)` does: the parameters are cast to the compute dtype, and the cast's backward returns
float32 gradients into the masters. The casts stay in place through the backward, not only the forward, so
that gradient checkpointing's recompute (which runs inside the backward) sees the tensors the forward saw.
Under FSDP2 the policy does the cast (per layer, again inside a recompute) and the reduction, so the same
`Precision` is handed to it instead (engine/parallel/fsdp.py).

Why not torch.autocast: autocast keeps norms and element-wise ops in float32 and picks per-op dtypes, which
is neither what the rollout engine (a bf16 copy of the weights) computes nor what FSDP2's policy computes.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass(frozen=True, slots=True)
class Precision:
    """The dtypes of one run. `master` is float32 for every recipe (float64 when computing in float64);
    the precision benchmark builds a pure-bf16 one (master == compute == bfloat16) only for contrast."""

    compute: torch.dtype
    master: torch.dtype
    sharded: bool = False  # FSDP2 applies the policy itself (engine/parallel/fsdp.py): no cast here

    @property
    def mixed(self) -> bool:
        return self.compute != self.master

    @property
    def loss_scaling(self) -> bool:
        """float16's range is too narrow for unscaled gradients: it trains with dynamic loss scaling."""
        return self.compute == torch.float16

    @property
    def loss_dtype(self) -> torch.dtype:
        """log-softmax and losses: float32, or float64 when the model computes in float64."""
        return torch.promote_types(self.compute, torch.float32)


def resolve_precision(dtype: str, backend_name: str) -> Precision:
    """`model.dtype` -> Precision. auto: float32 on the CPU, bfloat16 on accelerators."""
    if dtype == "auto":
        dtype = "float32" if backend_name == "cpu" else "bfloat16"
    compute = DTYPES[dtype]
    return Precision(compute=compute, master=torch.promote_types(compute, torch.float32))


T = TypeVar("T")


def in_compute_dtype(model: nn.Module, precision: Precision, fn: Callable[[], T]) -> T:
    """`fn()` (a forward AND its backward) while `model`'s parameters are differentiable casts to the compute
    dtype; the masters are back in place when it returns.

    The casts live for `fn` only (like FSDP2's unsharded compute parameters); their gradients arrive in the
    masters' `.grad` in the master dtype, so accumulation across micro-batches is float32. Buffers (rotary
    frequencies) keep the dtype `from_pretrained` gives them. The backward must run inside `fn`: with
    gradient checkpointing the backward recomputes each layer's forward, which must see the same
    compute-dtype tensors the first forward saw (torch checks the recomputed tensors' dtypes).
    """
    if not precision.mixed or precision.sharded or all(p.dtype == precision.compute for p in model.parameters()):
        return fn()
    params = {f"model.{name}": p.to(precision.compute) for name, p in model.named_parameters()}
    return torch.func.functional_call(_Scope(model), params, args=(fn,), tie_weights=True, strict=False)


class _Scope(nn.Module):
    """`functional_call`'s entry point: its parameter swap lasts for the whole call of `fn`, whatever `fn` does
    with the model in between (forward, loss, backward)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[], T]) -> T:
        return fn()


def compute_weights(named_tensors: Iterable[tuple[str, torch.Tensor]],
                    precision: Precision) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights the rollout side receives: detached, in the compute dtype, one tensor at a time (never a
    second full copy of the model at once). A sharded parameter (DTensor) is gathered whole first: a
    collective, so every rank must walk the same parameters in the same order."""
    for name, tensor in named_tensors:
        full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
        yield name, full.detach().to(precision.compute)


def weight_specs(named_tensors: Iterable[tuple[str, torch.Tensor]],
                 precision: Precision) -> Iterator[tuple[str, torch.Tensor]]:
    """Names, full shapes and compute dtypes of the weights the rollout side receives, as meta tensors: what
    a transport needs to plan its buffers, without gathering anything."""
    for name, tensor in named_tensors:
        yield name, torch.empty(tensor.shape, dtype=precision.compute, device="meta")


def make_grad_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler:
    """Dynamic loss scaling for float16 (a no-op scaler otherwise): the loss is multiplied before backward,
    the gradients divided before clipping, and a step with inf/nan gradients is skipped and the scale lowered."""
    return torch.amp.GradScaler(device.type, enabled=precision.loss_scaling)
