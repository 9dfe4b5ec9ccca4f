"""Rewards: score decoded completions against their prompt's reference answer.

`registry.py` holds the reward-function contract and loader, `gsm8k.py` the default exact-match reward,
`math.py` the `\\boxed{}` math-answer reward and `format.py` two answer-format rewards. Several functions with
weights, prompt-aware functions, a reward model (`model.py`) and the per-call timeout (`worker.py`) are put
together by `composite.build_rewards` from the recipe's `reward` section. This package module imports no torch,
so the timeout worker process starts light; import `engine.rewards.composite` / `.model` for those parts.
"""
from engine.rewards.registry import RewardFn, RewardResult, Scorer, load_reward_fn
from engine.rewards.gsm8k import extract_answer, gsm8k_reward, gsm8k_score, normalize_number
from engine.rewards.math import math_reward
from engine.rewards.format import boxed_format_reward, gsm8k_format_reward

__all__ = [
    "RewardFn",
    "RewardResult",
    "Scorer",
    "boxed_format_reward",
    "extract_answer",
    "gsm8k_format_reward",
    "gsm8k_reward",
    "gsm8k_score",
    "load_reward_fn",
    "math_reward",
    "normalize_number",
]
