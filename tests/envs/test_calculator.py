import pytest

from engine.envs.calculator import CalculatorError, calculate


@pytest.mark.parametrize("expression,value", [
    ("1234 * 5678", "7006652"),
    ("7 / 2", "3.5"),
    ("(2 + 3) * -4", "-20"),
    ("2 ** 10", "1024"),
    ("2^10", "1024"),
    ("1,000 + 1", "1001"),
    ("10 // 3 + 10 % 3", "4"),
    ("0.1 + 0.2", "0.3"),  # exact rationals, not binary floats
    ("123456789 * 987654321", "121932631112635269"),
])
def test_exact_values(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize("expression,message", [
    ("__import__('os')", "unsupported"),
    ("x + 1", "unsupported"),
    ("1 / 0", "division by zero"),
    ("9 ** 9 ** 9", "exponent"),
    ("2 ** 0.5", "exponent"),
    ("1 +", "cannot parse"),
    ("", "non-empty"),
    ("True + 1", "unsupported"),
])
def test_refusals_name_the_problem(expression, message):
    with pytest.raises(CalculatorError, match=message):
        calculate(expression)
