r"""Format rewards: 1.0 when the completion states its answer in the expected form, else 0.0, whatever the answer.

Meant as a second, lightly weighted term next to a correctness function, e.g.

    reward:
      functions: [engine.rewards.gsm8k:gsm8k_reward, engine.rewards.format:gsm8k_format_reward]
      weights: [1.0, 0.1]

so a model is nudged toward the answer format the correctness function reads best. Put first, a format reward
would also drive `reward/accuracy` (the first function is the correctness one), so keep it second.

- `gsm8k_format_reward`: the last non-blank line is exactly `#### <number>` (GSM8K's answer line; the number as
  engine/rewards/gsm8k.py reads numbers: "1,000", "$5", "-3.5"), with nothing after it.
- `boxed_format_reward`: the completion holds exactly one `\boxed{...}` (or `\fbox{...}`), and it is closed
  within engine/rewards/math.py's MAX_ANSWER_CHARS, so math_reward can read it.

Both are plain floats (so they count as "extracted"), never raise on a str, and run in linear time.
"""
from __future__ import annotations

from engine.rewards.gsm8k import _NUMBER, MARKER
from engine.rewards.math import _BOX, _box_content


def gsm8k_format_reward(completion: str, reference: str) -> float:
    """1.0 when the last non-blank line is `#### <number>` and nothing else, else 0.0."""
    last_line = completion.rstrip().rpartition("\n")[2].strip()
    if not last_line.startswith(MARKER):
        return 0.0
    return 1.0 if _NUMBER.fullmatch(last_line[len(MARKER):].strip()) else 0.0


def boxed_format_reward(completion: str, reference: str) -> float:
    """1.0 when the completion holds exactly one readable (closed) `\\boxed{...}`, else 0.0."""
    boxes = _BOX.finditer(completion)
    first = next(boxes, None)
    if first is None or next(boxes, None) is not None:
        return 0.0
    return 1.0 if _box_content(completion, first.end()) else 0.0
