"""The calculator tool: exact arithmetic on an expression, for word problems whose numbers are too large to
multiply in the head of a small model.

The expression is parsed with `ast` and only numbers, parentheses and + - * / // % ** (unary too) are
evaluated; nothing is `eval`ed, names and calls are refused. Integers stay exact; a result that is a whole
number prints without ".0". Exponents and operand sizes are bounded so `9**9**9` fails fast instead of
holding a CPU.
"""
from __future__ import annotations

import ast
import operator
from fractions import Fraction

MAX_EXPONENT = 64
MAX_DIGITS = 60  # refuse results longer than this: nothing a word problem needs

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    pass


def calculate(expression: str) -> str:
    """The value of `expression` as text, e.g. `calculate("1234 * 5678") == "7006652"`,
    `calculate("7 / 2") == "3.5"`. Raises `CalculatorError` with a message the policy can read."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("expected a non-empty arithmetic expression")
    try:
        tree = ast.parse(expression.replace("^", "**").replace(",", ""), mode="eval")
    except SyntaxError:
        raise CalculatorError(f"cannot parse {expression!r}") from None
    return _format(_evaluate(tree.body))


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        return _apply(type(node.op), left, right)
    raise CalculatorError(f"unsupported element {type(node).__name__}: only numbers and + - * / // % ** ( )")


def _apply(op: type, left: Fraction, right: Fraction) -> Fraction:
    if op in (ast.Div, ast.FloorDiv, ast.Mod) and right == 0:
        raise CalculatorError("division by zero")
    if op is ast.Pow:
        if right.denominator != 1 or abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponent must be a whole number of at most {MAX_EXPONENT}")
        if left == 0 and right < 0:
            raise CalculatorError("division by zero")
        right = int(right)
    result = Fraction(_BINARY[op](left, right))
    if len(str(abs(result.numerator))) > MAX_DIGITS or len(str(result.denominator)) > MAX_DIGITS:
        raise CalculatorError(f"result has more than {MAX_DIGITS} digits")
    return result


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.10g}"
