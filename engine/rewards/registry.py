"""The reward-function contract and the loader for `reward.function: "package.module:function"`.

Contract. A reward function is a plain `RewardFn`: `fn(completion, reference) -> float`, where
`completion` is the decoded response text alone (no prompt) and `reference` is `PromptItem.reference`.
It must be pure (no state between calls), must not raise on any completion text (model output is
arbitrary), and returns a finite score; GRPO only uses differences within a group, so any scale works.
It may instead return a `RewardResult` to also say whether it found an answer at all.

`load_reward_fn` returns a `Scorer`, which always yields a `RewardResult` for the controller:
- a `RewardResult` return value passes through;
- for the default `engine.rewards.gsm8k:gsm8k_reward` the scorer is its twin `gsm8k_score`, which reports
  whether `extract_answer` found a number (logged as the share of unextractable completions);
- any other plain float counts as extracted: a plain function has no way to say otherwise.
A non-numeric or non-finite score, or an exception, is an error naming the function's path.
"""
from __future__ import annotations

import importlib
import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RewardResult:
    score: float
    extracted: bool  # False when the completion held no answer the reward could read


RewardFn = Callable[[str, str], float | RewardResult]


@dataclass(frozen=True, slots=True)
class Scorer:
    """A loaded reward function: `scorer(completion, reference) -> RewardResult`, checked on every call."""

    path: str  # as configured, for error messages and logs
    fn: RewardFn

    def __call__(self, completion: str, reference: str) -> RewardResult:
        try:
            value = self.fn(completion, reference)
        except Exception as exc:
            raise RuntimeError(f"reward function '{self.path}' raised {type(exc).__name__}: {exc}") from exc
        if isinstance(value, RewardResult):
            score, extracted = value.score, value.extracted
        elif isinstance(value, numbers.Real):  # bool, int, float, numpy scalars
            score, extracted = value, True
        else:
            raise TypeError(f"reward function '{self.path}' returned {type(value).__name__}; expected a float")
        score = float(score)
        if not math.isfinite(score):
            raise ValueError(f"reward function '{self.path}' returned {score}; rewards must be finite")
        return RewardResult(score=score, extracted=bool(extracted))


def load_reward_fn(path: str) -> Scorer:
    """Import `"package.module:function"` (the function part may be dotted, e.g. `module:Class.method`)."""
    fn = _resolve(path)
    if not callable(fn):
        raise TypeError(f"reward.function '{path}': {type(fn).__name__} object is not callable")
    _check_signature(path, fn)
    return Scorer(path=path, fn=_with_extraction(fn))


def _resolve(path: str) -> object:
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"reward.function '{path}': expected 'package.module:function', "
                         f"e.g. 'engine.rewards.gsm8k:gsm8k_reward'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Tell "the module you named is missing" apart from "it exists but imports a missing package".
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ModuleNotFoundError(f"reward.function '{path}': module '{module_name}' not found",
                                      name=module_name) from exc
        raise ImportError(f"reward.function '{path}': importing '{module_name}' failed: {exc}") from exc
    except Exception as exc:
        raise ImportError(f"reward.function '{path}': importing '{module_name}' raised "
                          f"{type(exc).__name__}: {exc}") from exc
    obj: object = module
    for i, part in enumerate(attr_path.split(".")):
        if not hasattr(obj, part):
            owner = ".".join([module_name, *attr_path.split(".")[:i]])
            raise AttributeError(f"reward.function '{path}': '{owner}' has no attribute '{part}'")
        obj = getattr(obj, part)
    return obj


def _check_signature(path: str, fn: Callable) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no introspectable signature; trust them
        return
    try:
        signature.bind("completion", "reference")
    except TypeError as exc:
        raise TypeError(f"reward.function '{path}': must accept (completion, reference): {exc}") from exc


def _with_extraction(fn: RewardFn) -> RewardFn:
    """The twin of a plain reward function that also reports extraction, or `fn` itself."""
    # Imported here, not at the top: gsm8k.py imports RewardResult from this module.
    from engine.rewards.gsm8k import gsm8k_reward, gsm8k_score

    return gsm8k_score if fn is gsm8k_reward else fn
