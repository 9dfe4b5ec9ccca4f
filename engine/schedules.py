"""Learning-rate schedules: the multiplier of `optim.lr` for each iteration (`optim.lr_schedule`).

A pure function of the 0-based iteration index `i` (the iteration being trained is i + 1), with W =
`optim.warmup_iterations`, N = `run.iterations` (the horizon) and m = `optim.min_lr_ratio`:

    warmup (i < W):   (i + 1) / W
    after warmup:     p = clamp((i - W) / (N - W), 0, 1)
      constant        1
      linear          m + (1 - m) * (1 - p)
      cosine          m + (1 - m) * (1 + cos(pi * p)) / 2

so the first iteration after warmup trains at the full lr and the decay reaches m * lr at iteration N + 1,
the convention of Hugging Face's `get_{linear,cosine}_schedule_with_warmup` (the last trained iteration, N, is
one step above the floor).
"""
from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("constant", "linear", "cosine")


def lr_multiplier(i: int, *, schedule: str, warmup: int, total: int, min_ratio: float) -> float:
    """The factor of the base lr at 0-based iteration `i` (formulas in the module docstring)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    if warmup > 0 and i < warmup:
        return (i + 1) / warmup
    if schedule == "constant":
        return 1.0
    p = min(max((i - warmup) / max(total - warmup, 1), 0.0), 1.0)
    shape = 1.0 - p if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return min_ratio + (1.0 - min_ratio) * shape


def lr_lambda(*, schedule: str, warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """`lr_multiplier` bound to one run's settings, for `torch.optim.lr_scheduler.LambdaLR`."""
    if schedule != "constant" and total <= warmup:
        raise ValueError(f"lr schedule {schedule}: needs run.iterations ({total}) > optim.warmup_iterations "
                         f"({warmup}) to decay over")
    return lambda i: lr_multiplier(i, schedule=schedule, warmup=warmup, total=total, min_ratio=min_ratio)
