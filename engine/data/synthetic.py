"""Synthetic GSM8K-style word problems: the task of the embedded default (`embedded://tiny-math`).

Each problem is a short story with 2-3 arithmetic steps on single-digit numbers, e.g.

    Question: Tom has 7 apples. He buys 5 more and gives 3 to Ann. How many apples does Tom have now?
    Answer: 7 + 5 = 12
    12 - 3 = 9
    #### 9

`Problem.solution` is the full target completion in GSM8K answer format: it starts with one space (it
follows `PROMPT_TEMPLATE` directly), shows one `a op b = c` line per step, and ends with `#### <answer>`.

Splits are disjoint by construction: a question belongs to the held-out split iff a hash of its text falls
in the held-out bucket (1 in `_HELDOUT_BUCKETS`), whatever the seed or the sizes asked for. Within a split,
questions are unique. `make_split` is a pure function of (split, n, seed), and a smaller `n` gives a prefix
of a larger one.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
SPLITS = ("train", "heldout")

P = TypeVar("P")

_HELDOUT_BUCKETS = 10  # one question in ten (by hash) is held out
_MAX_TRIES_PER_PROBLEM = 50  # a split that needs more draws than this per problem has run out of questions


@dataclass(frozen=True, slots=True)
class Problem:
    """One word problem. `solution` is the target completion (leading space, `#### n` last line);
    `answer` is the final number as text."""

    question: str
    solution: str
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

# One step of working: (left operand, operator, right operand, result).
_Step = tuple[int, str, int, int]


def format_prompt(question: str) -> str:
    """The plain prompt the model completes; the completion starts with a space right after `Answer:`."""
    return PROMPT_TEMPLATE.format(question=question)


def make_split(split: str, n: int, seed: int = 0) -> list[Problem]:
    """Return `n` unique problems of `split` ("train" or "heldout"), deterministically from `seed`.

    No held-out question text ever appears in train (hash partition), for any seed and size.
    """
    return draw_split(split, n, random.Random(f"cadence-synthetic/{split}/{seed}"), _draw_problem)


def draw_split(split: str, n: int, rng: random.Random, draw: Callable[[random.Random], P]) -> list[P]:
    """`n` problems of `split` drawn with `draw(rng)` (anything with a `.question`), unique, and in the split
    the hash of their question puts them in; a smaller `n` gives a prefix of a larger one."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    want_heldout = split == "heldout"
    seen: set[str] = set()
    problems: list[P] = []
    for _ in range(n * _MAX_TRIES_PER_PROBLEM):
        if len(problems) == n:
            break
        problem = draw(rng)
        if _is_heldout(problem.question) != want_heldout or problem.question in seen:
            continue
        seen.add(problem.question)
        problems.append(problem)
    if len(problems) < n:
        raise ValueError(f"could only make {len(problems)} unique {split} problems, asked for {n}")
    return problems


def solution_text(steps: list[_Step]) -> str:
    """GSM8K-format working: one `a op b = c` line per step, then `#### answer`, with a leading space."""
    lines = [f"{a} {op} {b} = {c}" for a, op, b, c in steps]
    return " " + "\n".join(lines) + f"\n#### {steps[-1][3]}"


def _is_heldout(question: str) -> bool:
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % _HELDOUT_BUCKETS == 0


def _draw_problem(rng: random.Random) -> Problem:
    template = rng.choice(_TEMPLATES)
    owner, other = rng.sample(_PEOPLE, 2)
    question, steps = template(rng, owner, other, rng.choice(_OBJECTS))
    return Problem(question=question, solution=solution_text(steps), answer=str(steps[-1][3]))


# ------------------------------------------------------------------------------------------- templates
# Every number in a question is a single digit and the working uses them in the order they appear, so a
# tiny model can learn to copy them; intermediate results stay non-negative integers below 100.


def _digit(rng: random.Random, low: int = 2, high: int = 9) -> int:
    return rng.randint(low, min(high, 9))


def _buy_then_give(rng: random.Random, p: _Person, q: _Person, obj: str) -> tuple[str, list[_Step]]:
    a, b = _digit(rng), _digit(rng)
    c = _digit(rng, high=a + b - 1)
    question = (f"{p.name} has {a} {obj}. {p.subject} buys {b} more and gives {c} to {q.name}. "
                f"How many {obj} does {p.name} have now?")
    return question, [(a, "+", b, a + b), (a + b, "-", c, a + b - c)]


def _boxes_then_give(rng: random.Random, p: _Person, q: _Person, obj: str) -> tuple[str, list[_Step]]:
    a, b = _digit(rng), _digit(rng)
    c = _digit(rng, high=a * b - 1)
    question = (f"{p.name} has {a} boxes with {b} {obj} in each box. {p.subject} gives {c} {obj} to "
                f"{q.name}. How many {obj} does {p.name} have left?")
    return question, [(a, "*", b, a * b), (a * b, "-", c, a * b - c)]


def _packs_then_gift(rng: random.Random, p: _Person, q: _Person, obj: str) -> tuple[str, list[_Step]]:
    a, b, c = _digit(rng), _digit(rng), _digit(rng)
    question = (f"{p.name} buys {a} packs of {obj}. Each pack has {b} {obj}. {q.name} gives {p.object} "
                f"{c} more. How many {obj} does {p.name} have now?")
    return question, [(a, "*", b, a * b), (a * b, "+", c, a * b + c)]


def _pool_then_share(rng: random.Random, p: _Person, q: _Person, obj: str) -> tuple[str, list[_Step]]:
    friends = _digit(rng, high=6)
    share = rng.randint(-(-4 // friends), 18 // friends)  # total in 4..18: two single-digit piles of >= 2
    total = friends * share
    a = rng.randint(max(2, total - 9), min(9, total - 2))
    question = (f"{p.name} has {a} {obj} and {q.name} has {total - a} {obj}. They put them together and "
                f"share them equally among {friends} friends. How many {obj} does each friend get?")
    return question, [(a, "+", total - a, total), (total, "/", friends, share)]


def _buy_give_find(rng: random.Random, p: _Person, q: _Person, obj: str) -> tuple[str, list[_Step]]:
    a, b = _digit(rng), _digit(rng)
    c, d = _digit(rng, high=a + b - 1), _digit(rng)
    question = (f"{p.name} has {a} {obj}. {p.subject} buys {b} more, gives {c} to {q.name}, and then "
                f"finds {d} more. How many {obj} does {p.name} have now?")
    left = a + b - c
    return question, [(a, "+", b, a + b), (a + b, "-", c, left), (left, "+", d, left + d)]


def _bags_gift_lose(rng: random.Random, p: _Person, q: _Person, obj: str) -> tuple[str, list[_Step]]:
    a, b, c = _digit(rng), _digit(rng), _digit(rng)
    total = a * b + c
    d = _digit(rng, high=total - 1)
    question = (f"{p.name} has {a} bags with {b} {obj} in each bag. {q.name} gives {p.object} {c} more, "
                f"and then {p.name} loses {d}. How many {obj} does {p.name} have now?")
    return question, [(a, "*", b, a * b), (a * b, "+", c, total), (total, "-", d, total - d)]


_TEMPLATES: tuple[Callable[[random.Random, _Person, _Person, str], tuple[str, list[_Step]]], ...] = (
    _buy_then_give, _boxes_then_give, _packs_then_gift, _pool_then_share, _buy_give_find, _bags_gift_lose,
)
