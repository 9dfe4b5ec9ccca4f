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

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from engine.data.synthetic import SPLITS, format_prompt

__all__ = ["SPLITS", "CalcProblem", "format_prompt", "make_split"]

_HELDOUT_BUCKETS = 10  # one question in ten (by hash) is held out
_MAX_TRIES_PER_PROBLEM = 50


@dataclass(frozen=True, slots=True)
class CalcProblem:
    """One word problem. `expression` is what the calculator is asked (numbers in question order);
    `answer` is its exact value as text."""

    question: str
    expression: str
    answer: str


@dataclass(frozen=True, slots=True)
class _Person:
    name: str
    subject: str  # "He" / "She"
    object: str  # "him" / "her"


_PEOPLE = (
    _Person("Tom", "He", "him"), _Person("Ann", "She", "her"), _Person("Maria", "She", "her"),
    _Person("Ben", "He", "him"), _Person("Lily", "She", "her"), _Person("Sam", "He", "him"),
    _Person("Nora", "She", "her"), _Person("Jack", "He", "him"), _Person("Emma", "She", "her"),
    _Person("Omar", "He", "him"),
)
_OBJECTS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "cards", "shells")


def make_split(split: str, n: int, seed: int = 0) -> list[CalcProblem]:
    """Return `n` unique problems of `split` ("train" or "heldout"), deterministically from `seed`.

    No held-out question text ever appears in train (hash partition), for any seed and size.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"cadence-calc/{split}/{seed}")
    want_heldout = split == "heldout"
    seen: set[str] = set()
    problems: list[CalcProblem] = []
    for _ in range(n * _MAX_TRIES_PER_PROBLEM):
        if len(problems) == n:
            break
        problem = _draw_problem(rng)
        if _is_heldout(problem.question) != want_heldout or problem.question in seen:
            continue
        seen.add(problem.question)
        problems.append(problem)
    if len(problems) < n:
        raise ValueError(f"could only make {len(problems)} unique {split} problems, asked for {n}")
    return problems


def _is_heldout(question: str) -> bool:
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % _HELDOUT_BUCKETS == 0


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
