"""Mixed precision: float32 master parameters, forward/backward in the compute dtype (`model.dtype`).

The contract, on every backend and with any parallelism:

    master parameters, optimizer state   float32 (the update of a small lr survives; bf16 would round it away)
    forward / backward                   model.dtype (bfloat16 by default on accelerators)
    log-softmax, losses                  float32 (at least: float64 stays float64)
    gradients, their accumulation        float32, in the master parameters' .grad
    rollout side, reference model        model.dtype copies (they never take a step)
    float16                              dynamic loss scaling (torch.amp.GradScaler)

On one device `cast_forward` realises it the way FSDP2's `MixedPrecisionPolicy(param_dtype=compute,
reduce_dtype=float32)` does: the parameters are cast to the compute dtype for the forward, and the cast's
backward returns float32 gradients into the masters. Under FSDP2 the policy does the cast and the reduction,
so the same `Precision` is handed to it instead (`fsdp_policy`).

Why not torch.autocast: autocast keeps norms and element-wise ops in float32 and picks per-op dtypes, which
is neither what the rollout engine (a bf16 copy of the weights) computes nor what FSDP2's policy computes.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

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


def cast_forward(model: nn.Module, precision: Precision, **kwargs):
    """`model(**kwargs)` with its parameters cast to the compute dtype, differentiably.

    The cast copies live only for this forward and its backward (like FSDP2's unsharded compute parameters);
    their gradients arrive in the masters' `.grad` in the master dtype, so accumulation across micro-batches
    is float32. Buffers (rotary frequencies) keep their dtype, as `from_pretrained` leaves them.
    """
    if not precision.mixed or precision.sharded or not any(p.dtype != precision.compute for p in model.parameters()):
        return model(**kwargs)
    params = {name: p.to(precision.compute) for name, p in model.named_parameters()}
    return torch.func.functional_call(model, params, args=(), kwargs=kwargs, tie_weights=True, strict=False)


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
