import random
import time

import pytest

from engine.rewards import RewardResult, load_reward_fn, math_reward
from engine.rewards.math import MAX_ANSWER_CHARS, extract_math_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so the answer is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),  # nested braces
        (r"\boxed{\{1, 2\}}", r"\{1,2\}"),  # escaped braces are not structure
        (r"\boxed{3} at first, then \boxed{4}", "4"),  # the last box wins
        (r"\fbox{7}", "7"),
        (r"$\boxed 5$", "5"),
        (r"\boxed {12}", "12"),
        (r"\boxed{\dfrac12}", r"\frac{1}{2}"),
        (r"\boxed{\tfrac{3}{4}}", r"\frac{3}{4}"),
        (r"\boxed{\left( 1, 2 \right)}", "(1,2)"),
        (r"\boxed{\text{(B)}}", "(B)"),
        (r"\boxed{\textbf{\text{yes}}}", "yes"),
        (r"\boxed{12\text{ cm}}", "12"),  # a trailing unit goes
        (r"\boxed{\$1{,}000.}", "1000"),
        (r"\boxed{1,234,567}", "1234567"),
        (r"\boxed{x = -3}", "-3"),
        (r"\boxed{90^\circ}", "90"),
        (r"\boxed{25\%}", "25"),
        (r"\boxed{\displaystyle 2\,\pi}", r"2\pi"),
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),  # no box: the gsm8k rules
        ("so 3 then 4, finally 1,000.", "1000"),
    ],
)
def test_extract_math_answer(text, expected):
    assert extract_math_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no answer here",
        r"\boxed{}",
        r"\boxed{ }",
        r"\boxed{3} and then \boxed{4",  # the last box is cut off: no answer, not the earlier box
        r"\boxed",
        r"\boxed$",
        r"the answer is 7, so \boxed{" + "1" * (MAX_ANSWER_CHARS + 1) + "}",  # too long to read
    ],
)
def test_no_answer_is_none(text):
    assert extract_math_answer(text) is None
    assert math_reward(text, "7") == RewardResult(score=0.0, extracted=False)


def test_a_command_that_merely_starts_with_boxed_is_no_box():
    assert extract_math_answer(r"\boxedness 5") == "5"  # read by the gsm8k rules: there is no box


@pytest.mark.parametrize(
    "completion, reference, score",
    [
        (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
        (r"\boxed{0.50}", r"\frac{1}{2}", 1.0),
        (r"\boxed{1/2}", r"\dfrac{1}{2}", 1.0),
        (r"\boxed{-\frac{3}{4}}", "-0.75", 1.0),
        (r"\boxed{\frac{-3}{4}}", "-3/4", 1.0),
        (r"\boxed{2/4}", r"\frac12", 1.0),
        (r"\boxed{1000}", "1,000", 1.0),
        (r"\boxed{5}", "5.0", 1.0),
        (r"\boxed{\pi}", r"\pi", 1.0),
        (r"\boxed{(1,2)}", r"\left(1, 2\right)", 1.0),
        (r"\boxed{5}", r"The answer is $\boxed{5}$.", 1.0),  # a worked reference: its box
        (r"\boxed{72}", "48 + 24 = 72\n#### 72", 1.0),  # a GSM8K-style reference: after '####'
        ("#### 18", r"\frac{36}{2}", 1.0),  # no box: the gsm8k number, compared by value
        (r"\boxed{0.333}", r"\frac{1}{3}", 0.0),  # exact, no tolerance
        (r"\boxed{\frac{1}{2}}", "2", 0.0),
        (r"\boxed{1/0}", "0", 0.0),
        (r"\boxed{x+1}", "1+x", 0.0),  # no symbolic equivalence
        (r"\boxed{4}", "5", 0.0),
        (r"\boxed{5}", "", 0.0),  # an empty reference matches nothing
    ],
)
def test_reward(completion, reference, score):
    result = math_reward(completion, reference)
    assert result == RewardResult(score=score, extracted=True)
    assert isinstance(result.score, float)


def test_loads_by_import_path_and_reports_extraction():
    scorer = load_reward_fn("engine.rewards.math:math_reward")
    assert scorer(r"\boxed{2}", "2") == RewardResult(score=1.0, extracted=True)
    assert scorer("no idea", "2") == RewardResult(score=0.0, extracted=False)


def _random_answer(rng: random.Random) -> str:
    """A well-formed answer as a dataset would write it."""
    a, b = rng.randint(-999, 999), rng.randint(1, 99)
    return rng.choice([
        str(a), f"{a}.{b}", f"{a * 1000 + b:,}", f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}",
        f"({a}, {b})", f"\\text{{({chr(65 + b % 5)})}}", f"{b}\\sqrt{{{abs(a)}}}", f"x = {a}", f"{b}^\\circ",
    ])


def test_boxed_reference_always_matches_itself():
    rng = random.Random(0)
    for _ in range(2000):
        answer = _random_answer(rng)
        assert math_reward(f"... so the answer is $\\boxed{{{answer}}}$.", answer).score == 1.0, answer
        assert math_reward(f"\\boxed{{{answer}}}", answer + "1").score == 0.0, answer


def test_never_raises_on_random_text():
    """Seeded fuzz: random strings over the tokens the parser cares about; a score is always 0 or 1."""
    rng = random.Random(0)
    tokens = ["\\boxed", "\\boxed{", "\\boxed ", "\\fbox", "{", "}", "\\{", "\\}", "\\", "\\frac", "\\dfrac",
              "\\text{", "\\text{ ", "\\left", "\\right", "$", "\\$", "####", "0", "1", "9", ",", ".", "/", "-", " ",
              "\n", "x=", "%", "^\\circ", "{,}", "\\,", "٣", "３", "\ud800", "\x00", "a", "=", chr(0x10FFFF)]
    for _ in range(5000):
        text = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 40)))
        reference = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 10)))
        for completion, ref in ((text, "5"), (text, reference), ("\\boxed{5}", text)):
            result = math_reward(completion, ref)
            assert result.score in (0.0, 1.0) and isinstance(result.extracted, bool)


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{" * 150_000,
        "\\boxed{1}" * 110_000,
        "\\boxed{" + "{" * 1_000_000,
        "\\boxed{" + "\\{" * 500_000,
        "\\boxed" + " " * 1_000_000,
        "\\boxed " + "1" * 1_000_000,
        "\\boxeda" * 150_000,
        "\\boxed{" + "\\text{" * 150 + "1" + "}" * 151,
        "\\boxed{" + "1," * 400 + "}",
        "1," * 500_000,
        "#### " * 200_000,
        "9" * 1_000_000,
    ],
    ids=["open-boxes", "boxes", "open-braces", "escapes", "spaces", "long-token", "not-boxes", "nested-text",
         "commas-in-box", "commas", "markers", "digits"],
)
def test_linear_time_on_adversarial_megabyte(text):
    start = time.perf_counter()
    math_reward(text, text)
    math_reward(text, "5")
    assert time.perf_counter() - start < 1.0
