from engine.rewards.code import extract_code, unit_test_reward

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"


def test_passing_code_scores_one():
    completion = "Here:\n```python\ndef add(a, b):\n    return a + b\n```"
    assert unit_test_reward(completion, TESTS).score == 1.0


def test_failing_code_scores_zero():
    completion = "```python\ndef add(a, b):\n    return a - b\n```"
    result = unit_test_reward(completion, TESTS)
    assert result.score == 0.0 and result.extracted


def test_hanging_code_scores_zero():
    completion = "```python\ndef add(a, b):\n    while True:\n        pass\n```\n"
    assert unit_test_reward(completion, "add(1, 2)").score == 0.0


def test_no_code_block_is_not_extracted():
    result = unit_test_reward("def add(a, b): return a + b", TESTS)
    assert result.score == 0.0 and not result.extracted


def test_last_block_is_the_answer():
    assert extract_code("```\nfirst\n```\nthen\n```py\nsecond\n```") == "second\n"
