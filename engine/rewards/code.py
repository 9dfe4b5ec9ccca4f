"""A unit-test reward for generated code: the completion's last ```python block runs in the sandbox
(`engine.envs.sandbox`) followed by the reference, which holds the tests (plain `assert`s); the reward is 1.0
when the script exits cleanly and 0.0 otherwise (a failed assert, an exception, a limit reached).

Use it as `reward.functions: [engine.rewards.code:unit_test_reward]` with a dataset whose answer column holds
the tests; with `reward.timeout_s` the call also runs in the reward worker, which adds a bound around the
sandbox's own limits.
"""
from __future__ import annotations

import re

from engine.envs.sandbox import SandboxLimits, run_python
from engine.rewards.registry import RewardResult

_BLOCK_RE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str | None:
    """The last fenced code block of the completion (```python or a bare ```), or None."""
    blocks = _BLOCK_RE.findall(completion)
    return blocks[-1] if blocks else None


def unit_test_reward(completion: str, reference: str) -> RewardResult:
    code = extract_code(completion)
    if code is None:
        return RewardResult(score=0.0, extracted=False)
    result = run_python(code + "\n\n" + reference + "\n", SandboxLimits())
    return RewardResult(score=1.0 if result.ok else 0.0, extracted=True)
