"""Rewards: score a decoded completion against its prompt's reference answer.

See `registry.py` for the reward-function contract, `gsm8k.py` for the default exact-match reward and
`math.py` for the `\\boxed{}` math-answer reward (`reward.function: engine.rewards.math:math_reward`).
"""
from engine.rewards.registry import RewardFn, RewardResult, Scorer, load_reward_fn
from engine.rewards.gsm8k import extract_answer, gsm8k_reward, gsm8k_score, normalize_number
from engine.rewards.math import math_reward

__all__ = [
    "RewardFn",
    "RewardResult",
    "Scorer",
    "extract_answer",
    "gsm8k_reward",
    "gsm8k_score",
    "load_reward_fn",
    "math_reward",
    "normalize_number",
]
