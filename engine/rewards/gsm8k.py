"""GSM8K exact-match reward: 1.0 when the completion's final number equals the reference, else 0.0.

The final number is the first number after the last `####` (the GSM8K answer format), or, when no
number follows any `####`, the last number anywhere in the text, so a model that has not learnt the
format yet can still be rewarded for a right answer. Numbers are compared by value as decimal strings:
"1,000" == "1000", "$5" == "5.00" == "5", ".5" == "0.50", "-0" == "0". Only ASCII digits count
(GSM8K is ASCII; other scripts' digits such as "٣" are not read as numbers).

Cost is linear in the text length for any input: one `rfind`, then one regex with no ambiguous
repetition (so no catastrophic backtracking), and no int/float conversion (so no size limits or
precision loss on huge numbers).
"""
from __future__ import annotations

import re
from collections import deque

from engine.rewards.registry import RewardResult

MARKER = "####"

# Optional sign and/or currency, then either an integer part (plain digits, or digits grouped in threes
# by commas) with an optional fraction, or a bare fraction (".5"). Comma groups must be exactly three
# digits, so a list "1,2,3" reads as three numbers, not 123. A "-" right after a digit is a subtraction
# or a range ("10-20"), not a sign.
_NUMBER = re.compile(
    r"(?:(?<![0-9])-\$?|\$-?)?"
    r"(?:(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+)"
)


def normalize_number(token: str) -> str:
    """Canonical decimal text of a number matched by `_NUMBER`: no sign of zero, commas, currency,
    leading zeros of the integer part or trailing zeros of the fraction."""
    negative = token.startswith(("-", "$-"))
    whole, _, frac = token.replace(",", "").lstrip("-$").partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    text = f"{whole}.{frac}" if frac else whole
    return "-" + text if negative and text != "0" else text


def extract_answer(text: str) -> str | None:
    """The completion's final number, normalised (see the module docstring), or None when it has none.

    Never raises for a str; anything else is a TypeError from the caller's bug, not a wrong answer.
    """
    marker = text.rfind(MARKER)
    if marker >= 0:
        after = _NUMBER.search(text, marker + len(MARKER))
        if after is not None:
            return normalize_number(after.group())
    # deque(maxlen=1) keeps only the last match while finditer runs at C speed.
    last = deque(_NUMBER.finditer(text), maxlen=1)
    return normalize_number(last[0].group()) if last else None


def normalize_reference(reference: str) -> str:
    """The reference's number, normalised like a completion's; a reference with no number stays as its
    stripped text (so it can never match an extracted number)."""
    extracted = extract_answer(reference)
    return extracted if extracted is not None else reference.strip()


def gsm8k_score(completion: str, reference: str) -> RewardResult:
    """Exact match of the extracted final number, with whether any number could be extracted."""
    answer = extract_answer(completion)
    if answer is None:
        return RewardResult(score=0.0, extracted=False)
    return RewardResult(score=1.0 if answer == normalize_reference(reference) else 0.0, extracted=True)


def gsm8k_reward(completion: str, reference: str) -> float:
    """1.0 when the completion's final number equals the reference's, else 0.0 (a plain `RewardFn`)."""
    return gsm8k_score(completion, reference).score


def marked_answer_score(completion: str, reference: str) -> RewardResult:
    """Like `gsm8k_score`, but only a number after the last `####` counts: no fallback to the last number.

    For multi-turn trajectories, whose text includes the environment's observations: a tool's result must not
    be read as the policy's answer when the policy gave none."""
    marker = completion.rfind(MARKER)
    after = _NUMBER.search(completion, marker + len(MARKER)) if marker >= 0 else None
    if after is None:
        return RewardResult(score=0.0, extracted=False)
    return RewardResult(score=1.0 if normalize_number(after.group()) == normalize_reference(reference) else 0.0,
                        extracted=True)

