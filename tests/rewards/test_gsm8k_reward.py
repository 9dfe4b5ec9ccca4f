import random
import time

import pytest

from engine.rewards import extract_answer, gsm8k_reward, gsm8k_score
from engine.rewards.gsm8k import marked_answer_score


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
        ("#### 1,000", "1000"),
        ("It costs $5.", "5"),
        ("#### 5.0", "5"),
        ("#### 5.00", "5"),
        ("#### -3", "-3"),
        ("#### .5", "0.5"),
        ("#### 0.50", "0.5"),
        ("#### $-5", "-5"),
        ("#### -$5", "-5"),
        ("#### -0", "0"),
        ("#### 007", "7"),
        ("#### 1,234,567.890", "1234567.89"),
        ("#### 72 apples, since 6 * 12 = 72 and 3 more", "72"),  # first number after the marker
        ("#### #### 3", "3"),  # nested markers: the last one wins
        ("#### 10\nQuestion: more? Answer: #### 20", "20"),
        ("#### 72\n####", "72"),  # nothing after the last marker: fall back to the last number
        ("12 apples ####", "12"),
        ("Tom has 3 apples, then 4, so 7.", "7"),  # no marker: last number
        ("the list 1,2,3", "3"),  # a comma between single digits is a list, not grouping
        ("from 10-20", "20"),  # a hyphen after a digit is a range, not a sign
        ("1" * 5000, "1" * 5000),  # no int conversion: no digit limit, no precision loss
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", ["", "####", "#### ", "no numbers here", "$", "-", ".", "٣", "３", "\x00\xff"])
def test_no_answer_is_none(text):
    assert extract_answer(text) is None


@pytest.mark.parametrize(
    "completion, reference, score",
    [
        ("#### 1000", "1,000", 1.0),
        ("#### 1,000", "1000", 1.0),
        ("The answer is $18.00", "18", 1.0),
        ("#### 5", "5.0", 1.0),
        ("#### .5", "0.5", 1.0),
        ("#### 17", "18", 0.0),
        ("#### -18", "18", 0.0),
        ("I don't know", "18", 0.0),
        ("#### 18", "eighteen", 0.0),
    ],
)
def test_reward(completion, reference, score):
    assert gsm8k_reward(completion, reference) == score
    assert isinstance(gsm8k_reward(completion, reference), float)


def test_score_reports_extraction():
    assert gsm8k_score("#### 3", "3").extracted
    assert gsm8k_score("#### 4", "3").extracted
    result = gsm8k_score("no idea", "3")
    assert (result.score, result.extracted) == (0.0, False)


def test_never_raises_on_random_text():
    """Seeded fuzz: random strings over an alphabet dense in the characters the regex cares about."""
    rng = random.Random(0)
    alphabet = "0123456789,.$-#  \n\tax٣３\x00\ud800€" + chr(0x10FFFF)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        answer = extract_answer(text)
        assert answer is None or answer == extract_answer("#### " + answer)  # normalised form is a fixed point
        assert gsm8k_reward(text, "5") in (0.0, 1.0)


@pytest.mark.parametrize(
    "text",
    [
        "1," * 500_000,
        "-$" * 500_000,
        "1,0001" * 170_000,
        "1." * 500_000,
        "#### " * 200_000,
        "9" * 1_000_000,
        "1 " * 500_000,
        "#" * 1_000_000 + "1",
    ],
    ids=["commas", "signs", "bad-groups", "dots", "markers", "digits", "many-numbers", "hashes"],
)
def test_linear_time_on_adversarial_megabyte(text):
    start = time.perf_counter()
    extract_answer(text)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("completion, score, extracted", [
    ("<tool_call>{}</tool_call>\n<tool_response>\n178377\n</tool_response>\n #### 178377", 1.0, True),
    ("<tool_call>{}</tool_call>\n<tool_response>\n178377\n</tool_response>\n", 0.0, False),  # no answer given
    ("the tool said 178377", 0.0, False),
    (" #### 178,377", 1.0, True),
    (" #### 5 then 178377", 0.0, True),
])
def test_marked_answer_counts_only_the_number_after_the_marker(completion, score, extracted):
    result = marked_answer_score(completion, "178377")
    assert (result.score, result.extracted) == (score, extracted)
