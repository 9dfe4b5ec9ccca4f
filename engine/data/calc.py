"""Synthetic word problems whose arithmetic is too large to do in the head: the task of `embedded://tiny-calc`.

Each problem is a one-line story with one multiplication of a 3-4 digit number by a 2-digit number, then
one addition or subtraction of a 3-digit number, e.g.

    question:   Tom packs 1234 boxes with 56 apples in each box. He then sells 789 apples. How many apples
                are left?
    expression: 1234 * 56 - 789
    answer:     68315

The numbers appear in the question in the order the expression uses them, so the expression is a copy of
the question's numbers with the right operators, and `CalcProblem.expression` evaluates (with the exact
calculator, engine/envs/calculator.py) to `CalcProblem.answer`. A 0.7M-parameter model cannot multiply
1234 by 56 in one forward pass; with the calculator the task is copying.

Same discipline as `engine.data.synthetic`: splits are disjoint by a hash of the question text (1 in
`_HELDOUT_BUCKETS` held out), questions are unique within a split, and `make_split` is a pure function of
(split, n, seed) whose smaller `n` gives a prefix of a larger one.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from engine.data.synthetic import _OBJECTS, _PEOPLE, SPLITS, _Person, draw_split, format_prompt

__all__ = ["SPLITS", "CalcProblem", "format_prompt", "make_split"]


@dataclass(frozen=True, slots=True)
class CalcProblem:
    """One word problem. `expression` is what the calculator is asked (numbers in question order);
    `answer` is its exact value as text."""

    question: str
    expression: str
    answer: str


def make_split(split: str, n: int, seed: int = 0) -> list[CalcProblem]:
    """Return `n` unique problems of `split` ("train" or "heldout"), deterministically from `seed`.

    No held-out question text ever appears in train (hash partition), for any seed and size.
    """
    return draw_split(split, n, random.Random(f"cadence-calc/{split}/{seed}"), _draw_problem)


def _draw_problem(rng: random.Random) -> CalcProblem:
    template = rng.choice(_TEMPLATES)
    owner, other = rng.sample(_PEOPLE, 2)
    a, b, c = rng.randint(100, 9999), rng.randint(11, 99), rng.randint(100, 999)
    question, op = template(a, b, c, owner, other, rng.choice(_OBJECTS))
    value = a * b + c if op == "+" else a * b - c  # a * b >= 1100 > c: never negative
    return CalcProblem(question=question, expression=f"{a} * {b} {op} {c}", answer=str(value))


# ------------------------------------------------------------------------------------------- templates
# (a, b, c, owner, other, object) -> (question, the operator applied to c). a has 3-4 digits, b 2, c 3.

_Template = Callable[[int, int, int, _Person, _Person, str], tuple[str, str]]


def _boxes_then_sell(a: int, b: int, c: int, p: _Person, q: _Person, obj: str) -> tuple[str, str]:
    return (f"{p.name} packs {a} boxes with {b} {obj} in each box. {p.subject} then sells {c} {obj}. "
            f"How many {obj} are left?"), "-"


def _crates_then_gift(a: int, b: int, c: int, p: _Person, q: _Person, obj: str) -> tuple[str, str]:
    return (f"{p.name} buys {a} crates of {obj} with {b} {obj} in each crate, and {q.name} gives {p.object} "
            f"{c} more. How many {obj} does {p.name} have now?"), "+"


def _hours_then_ship(a: int, b: int, c: int, p: _Person, q: _Person, obj: str) -> tuple[str, str]:
    return (f"{p.name} makes {a} {obj} every hour for {b} hours and ships {c} of them to {q.name}. "
            f"How many {obj} does {p.name} keep?"), "-"


def _weeks_then_find(a: int, b: int, c: int, p: _Person, q: _Person, obj: str) -> tuple[str, str]:
    return (f"{p.name} collects {a} {obj} each week for {b} weeks and then finds {c} more. "
            f"How many {obj} does {p.name} have?"), "+"


_TEMPLATES: tuple[_Template, ...] = (_boxes_then_sell, _crates_then_gift, _hours_then_ship, _weeks_then_find)
