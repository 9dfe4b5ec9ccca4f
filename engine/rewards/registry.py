"""The reward-function contract and the loader for one entry of `reward.functions: ["package.module:function"]`.

Contract. A reward function is a plain `RewardFn`: `fn(completion, reference) -> float`, where
`completion` is the decoded response text alone (no prompt) and `reference` is `PromptItem.reference`.
A function with a parameter named `prompt` (`fn(completion, reference, prompt)` or `..., *, prompt`) is also
given the rendered prompt text (`PromptItem.text`) as `prompt=`; this is decided once, from the signature, when
it is loaded (a `**kwargs` catch-all does not count).
It must be pure (no state between calls), must not raise on any completion text (model output is
arbitrary), and returns a finite score; GRPO only uses differences within a group, so any scale works.
It may instead return a `RewardResult` to also say whether it found an answer at all.

`load_reward_fn` returns a `Scorer`, which always yields a `RewardResult` for the controller:
- a `RewardResult` return value passes through;
- for the default `engine.rewards.gsm8k:gsm8k_reward` the scorer is its twin `gsm8k_score`, which reports
  whether `extract_answer` found a number (logged as the share of unextractable completions);
- any other plain float counts as extracted: a plain function has no way to say otherwise.
A non-numeric or non-finite score, or an exception, is an error naming the function's path.
Several functions, their weights, a reward model and the per-call timeout are combined in `composite.py`.
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
    """A loaded reward function: `scorer(completion, reference, prompt) -> RewardResult`, checked on every call.
    `prompt` reaches the function only when it declared it (`wants_prompt`)."""

    path: str  # as configured, for error messages and logs
    fn: RewardFn
    wants_prompt: bool = False

    def __call__(self, completion: str, reference: str, prompt: str = "") -> RewardResult:
        try:
            kwargs = {"prompt": prompt} if self.wants_prompt else {}
            value = self.fn(completion, reference, **kwargs)
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
        raise TypeError(f"reward.functions '{path}': {type(fn).__name__} object is not callable")
    wants_prompt = _wants_prompt(fn)
    _check_signature(path, fn, wants_prompt)
    return Scorer(path=path, fn=_with_extraction(fn), wants_prompt=wants_prompt)


def _resolve(path: str) -> object:
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"reward.functions '{path}': expected 'package.module:function', "
                         f"e.g. 'engine.rewards.gsm8k:gsm8k_reward'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Tell "the module you named is missing" apart from "it exists but imports a missing package".
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ModuleNotFoundError(f"reward.functions '{path}': module '{module_name}' not found",
                                      name=module_name) from exc
        raise ImportError(f"reward.functions '{path}': importing '{module_name}' failed: {exc}") from exc
    except Exception as exc:
        raise ImportError(f"reward.functions '{path}': importing '{module_name}' raised "
                          f"{type(exc).__name__}: {exc}") from exc
    obj: object = module
    for i, part in enumerate(attr_path.split(".")):
        if not hasattr(obj, part):
            owner = ".".join([module_name, *attr_path.split(".")[:i]])
            raise AttributeError(f"reward.functions '{path}': '{owner}' has no attribute '{part}'")
        obj = getattr(obj, part)
    return obj


def _signature(fn: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no introspectable signature; trust them
        return None


def _wants_prompt(fn: Callable) -> bool:
    """True when `fn` names a `prompt` parameter that can be passed by keyword."""
    signature = _signature(fn)
    parameter = signature.parameters.get("prompt") if signature is not None else None
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


def _check_signature(path: str, fn: Callable, wants_prompt: bool) -> None:
    signature = _signature(fn)
    if signature is None:
        return
    try:
        signature.bind("completion", "reference", **({"prompt": "prompt"} if wants_prompt else {}))
    except TypeError as exc:
        accepted = "(completion, reference, prompt=...)" if wants_prompt else "(completion, reference)"
        raise TypeError(f"reward.functions '{path}': must accept {accepted}: {exc}") from exc


def _with_extraction(fn: RewardFn) -> RewardFn:
    """The twin of a plain reward function that also reports extraction, or `fn` itself."""
    # Imported here, not at the top: gsm8k.py imports RewardResult from this module.
    from engine.rewards.gsm8k import gsm8k_reward, gsm8k_score

    return gsm8k_score if fn is gsm8k_reward else fn
