"""optim.lr_schedule: the learning rate of each iteration is the documented formula (engine/schedules.py)."""
from __future__ import annotations

import math

import pytest

from engine.config import ConfigError, OptimConfig, load_config
from engine.schedules import lr_multiplier
from helpers import make_trainer

WARMUP, TOTAL, MIN_RATIO = 2, 10, 0.1


def expected(schedule: str, i: int) -> float:
    """The formulas, spelled out independently of the implementation: warmup, then decay over N - W iterations."""
    if i < WARMUP:
        return (i + 1) / WARMUP
    p = min((i - WARMUP) / (TOTAL - WARMUP), 1.0)
    return {"constant": 1.0, "linear": MIN_RATIO + (1 - MIN_RATIO) * (1 - p),
            "cosine": MIN_RATIO + (1 - MIN_RATIO) * 0.5 * (1 + math.cos(math.pi * p))}[schedule]


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_the_trainers_lr_at_each_iteration_is_the_schedules_formula(tiny_model_dir, schedule):
    ratio = MIN_RATIO if schedule != "constant" else 0.0
    optim = OptimConfig(lr=0.5, warmup_iterations=WARMUP, lr_schedule=schedule, min_lr_ratio=ratio)
    trainer = make_trainer(tiny_model_dir, optim=optim, total_iterations=TOTAL)
    lrs = []
    for _ in range(TOTAL + 2):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.end_iteration()
    want = [0.5 * expected(schedule, i) for i in range(TOTAL + 2)]
    assert lrs == pytest.approx(want, rel=1e-12)
    assert lrs[:WARMUP + 1] == pytest.approx([0.25, 0.5, 0.5])  # warmup, then the full lr first
    if schedule != "constant":
        assert lrs[TOTAL] == pytest.approx(0.5 * MIN_RATIO) and lrs[-1] == pytest.approx(0.5 * MIN_RATIO)


def test_cosine_is_halfway_at_the_middle_of_the_decay_and_linear_without_warmup_starts_at_one():
    mid = lr_multiplier(6, schedule="cosine", warmup=2, total=10, min_ratio=0.0)
    assert mid == pytest.approx(0.5)  # p = 1/2: cos(pi/2) = 0
    assert lr_multiplier(0, schedule="linear", warmup=0, total=4, min_ratio=0.0) == 1.0
    assert lr_multiplier(2, schedule="linear", warmup=0, total=4, min_ratio=0.0) == 0.5


def test_the_default_keeps_a_constant_lr_after_warmup(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir, optim=OptimConfig(lr=1.0, warmup_iterations=3))  # no horizon needed
    lrs = []
    for _ in range(6):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.end_iteration()
    assert lrs == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])


@pytest.mark.parametrize("overrides, message", [
    (["optim.min_lr_ratio=1.5", "optim.lr_schedule=cosine"], "optim.min_lr_ratio: must be in [0, 1], got 1.5"),
    (["optim.min_lr_ratio=0.1"], "optim.min_lr_ratio: only read with optim.lr_schedule=linear or cosine"),
    (["optim.lr_schedule=linear", "optim.warmup_iterations=10", "run.iterations=10"],
     "optim.lr_schedule: linear decays after warmup, so it needs run.iterations (10) > optim.warmup_iterations"),
    (["optim.lr_schedule=step"], "optim.lr_schedule: got 'step'; allowed: constant, linear, cosine"),
])
def test_bad_schedule_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.path=m", *overrides])
    assert message in str(info.value) and "\n" not in str(info.value)
