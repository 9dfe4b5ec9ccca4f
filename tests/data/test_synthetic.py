"""engine.data.synthetic: deterministic, disjoint splits of arithmetically correct GSM8K-format problems."""
import re

import pytest

from engine.data.synthetic import PROMPT_TEMPLATE, Problem, format_prompt, make_split

_STEP = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def test_make_split_is_deterministic_and_prefix_stable():
    first = make_split("train", 300, seed=3)
    assert first == make_split("train", 300, seed=3)
    assert make_split("train", 100, seed=3) == first[:100]
    assert make_split("train", 300, seed=4) != first


def test_questions_are_unique_within_a_split():
    problems = make_split("heldout", 2000)
    assert len({p.question for p in problems}) == 2000


@pytest.mark.parametrize("train_seed,heldout_seed", [(0, 0), (1, 0), (0, 7)])
def test_heldout_never_appears_in_train(train_seed, heldout_seed):
    train = {p.question for p in make_split("train", 30_000, seed=train_seed)}
    heldout = {p.question for p in make_split("heldout", 2000, seed=heldout_seed)}
    assert not train & heldout


def test_unknown_split_names_the_allowed_values():
    with pytest.raises(ValueError, match="train, heldout"):
        make_split("test", 10)


def test_solution_is_gsm8k_format_with_correct_arithmetic():
    for problem in make_split("train", 500) + make_split("heldout", 200):
        assert isinstance(problem, Problem)
        assert problem.solution.startswith(" ") and not problem.solution.startswith("  ")
        *steps, last = problem.solution[1:].split("\n")
        assert last == f"#### {problem.answer}"
        assert 2 <= len(steps) <= 3
        for line in steps:
            a, op, b, c = _STEP.match(line).groups()
            assert _APPLY[op](int(a), int(b)) == int(c), line
        assert int(_STEP.match(steps[-1]).group(4)) == int(problem.answer) >= 0


def test_format_prompt_uses_the_template():
    assert PROMPT_TEMPLATE == "Question: {question}\nAnswer:"
    assert format_prompt("How many?") == "Question: How many?\nAnswer:"
