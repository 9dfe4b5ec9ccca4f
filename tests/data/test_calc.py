"""engine.data.calc: deterministic, disjoint splits of problems whose answer is the calculator's value of
their expression, and the `data.source: calc` wiring."""
import re

import pytest

from engine.config import ConfigError, DataConfig, EvalConfig
from engine.data.calc import CalcProblem, make_split
from engine.data.sources import load_examples
from engine.envs.calculator import calculate

_EXPRESSION = re.compile(r"^(\d{3,4}) \* (\d{2}) ([-+]) (\d{3})$")


def test_make_split_is_deterministic_and_prefix_stable():
    first = make_split("train", 300, seed=3)
    assert first == make_split("train", 300, seed=3)
    assert make_split("train", 100, seed=3) == first[:100]
    assert make_split("train", 300, seed=4) != first


def test_questions_are_unique_within_a_split():
    assert len({p.question for p in make_split("heldout", 2000)}) == 2000


@pytest.mark.parametrize("train_seed,heldout_seed", [(0, 0), (1, 0), (0, 7)])
def test_heldout_never_appears_in_train(train_seed, heldout_seed):
    train = {p.question for p in make_split("train", 20_000, seed=train_seed)}
    heldout = {p.question for p in make_split("heldout", 2000, seed=heldout_seed)}
    assert not train & heldout


def test_unknown_split_names_the_allowed_values():
    with pytest.raises(ValueError, match="train, heldout"):
        make_split("test", 10)


def test_answer_is_the_calculators_value_of_the_expression():
    for problem in make_split("train", 500) + make_split("heldout", 200):
        assert isinstance(problem, CalcProblem)
        assert problem.answer == calculate(problem.expression)
        a, b, _, c = _EXPRESSION.match(problem.expression).groups()
        assert int(problem.answer) > 0
        # the numbers appear in the question in the order the expression uses them
        assert re.findall(r"\d+", problem.question) == [a, b, c]


def test_calc_source_loads_both_splits():
    train, heldout = load_examples(DataConfig(source="calc", train_size=50), EvalConfig(heldout_size=20), seed=1)
    assert train == make_split("train", 50, seed=1)
    assert heldout == make_split("heldout", 20, seed=0)  # the held-out split does not depend on the run's seed


def test_calc_source_refuses_file_keys():
    with pytest.raises(ConfigError, match="data.path: not read by data.source=calc"):
        DataConfig(source="calc", path="somewhere")
