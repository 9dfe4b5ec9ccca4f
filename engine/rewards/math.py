r"""Math-answer reward (MATH-style `\boxed{}` answers): 1.0 when the completion's final answer equals the
reference, else 0.0, as a `RewardResult` that also says whether an answer was found.

What is read from the completion:
1. The last `\boxed{...}` (or `\fbox{...}`): braces nest to any depth and `\{`, `\}` are literal, so
   `\boxed{\frac{1}{2}}` and `\boxed{\{1,2\}}` read whole; or the unbraced `\boxed 5` (the token up to the next
   space, `$` or brace). The last box decides: one that is not closed within MAX_ANSWER_CHARS characters (cut
   off or unbalanced) means no answer, not the box before it.
2. With no box at all, the GSM8K rules (engine/rewards/gsm8k.py): the first number after the last `####`,
   else the last number in the text, so a model that has not learnt to box its answer can still be rewarded.
The reference is the last box's content when it holds a box (a worked MATH solution), else the text after its
last `####` when it has one, else the whole reference.

Both sides are normalised: `$`, `\$`, `%`, `\%`, degrees (`^\circ`), spaces and LaTeX spacing (`\,` `\!`
`\quad` ...), `\left` / `\right` / `\displaystyle`, a trailing "." and a leading one-letter assignment
(`x=`) go; `\text{...}`, `\textbf{...}`, `\mathrm{...}`, `\mbox{...}` keep their content, except a
trailing unit `\text{ cm}` (content starting with a space), which goes; `\dfrac`, `\tfrac` become `\frac` and
`\frac12` becomes `\frac{1}{2}`; thousands separators go (`1,000`, `1{,}000`; a comma before exactly three
digits, so the pair `(1,2)` stays). Two answers match when their normalised texts are equal, or when both
are numbers of equal value: integers, decimals, `a/b` and `\frac{a}{b}` with an optional leading `-`,
compared as exact fractions (0.5 == 1/2 == \dfrac12; 0.333 != 1/3). Not handled: symbolic equivalence
(`x+1` vs `1+x`), other units, intervals vs inequalities, multiple-choice letters vs their text.

Never raises for str input, and time is linear in the text length: one regex pass with no ambiguous
repetition finds the last box, the brace scan stops after MAX_ANSWER_CHARS, and normalisation only runs on
answers at most that long (a longer reference is compared as its stripped text).
"""
from __future__ import annotations

import re
from collections import deque
from fractions import Fraction

from engine.rewards.gsm8k import extract_answer as extract_number
from engine.rewards.registry import RewardResult

MAX_ANSWER_CHARS = 1000  # a final answer longer than this is not read (nor normalised)
MARKER = "####"

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")  # not \boxedfoo
_SPACES = re.compile(r"\s*")
_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)  # "\\" + any char is one token, so \{ is no brace
_UNBRACED = re.compile(r"[^\s${}]{1,%d}" % (MAX_ANSWER_CHARS + 1))

_UNIT = re.compile(r"\\(?:text|mbox|mathrm)\{\s[^{}]*\}\s*$")  # a trailing "\text{ cm}"
_TEXT = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox)\{([^{}]*)\}")
_DROPPED = re.compile(r"\\(?:left|right|displaystyle|q?quad)(?![A-Za-z])|\\[,;:! ]|\^\{?\\circ\}?|\\?[$%]")
_FRAC_ALIAS = re.compile(r"\\[dt]frac(?![A-Za-z])")
_FRAC_SHORT = re.compile(r"\\frac([0-9])([0-9])")
_THOUSANDS = re.compile(r"(?<=[0-9]),(?=[0-9]{3}(?![0-9]))")
_ASSIGNMENT = re.compile(r"[A-Za-z]=")

_UNSIGNED = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_NUMBER = re.compile(rf"(?P<neg>-?)(?:\\frac\{{(?P<fn>-?{_UNSIGNED})\}}\{{(?P<fd>-?{_UNSIGNED})\}}"
                     rf"|(?P<n>{_UNSIGNED})(?:/(?P<d>{_UNSIGNED}))?)")
_MAX_NUMBER_CHARS = 100  # longer numbers compare as text (no big-integer arithmetic on model output)


def math_reward(completion: str, reference: str) -> RewardResult:
    """1.0 when the completion's final answer matches the reference (see the module docstring), else 0.0."""
    answer = extract_math_answer(completion)
    if answer is None:
        return RewardResult(score=0.0, extracted=False)
    return RewardResult(score=1.0 if answers_match(answer, reference_answer(reference)) else 0.0, extracted=True)


def extract_math_answer(text: str) -> str | None:
    """The completion's final answer, normalised: the last box's content, or with no box the GSM8K number;
    None when there is none (or the last box is unclosed, too long or empty)."""
    last = deque(_BOX.finditer(text), maxlen=1)  # keeps only the last match while finditer runs at C speed
    if not last:
        return extract_number(text)
    content = _box_content(text, last[0].end())
    answer = normalize_answer(content) if content is not None else ""
    return answer or None


def reference_answer(reference: str) -> str:
    """The reference's answer, normalised: its last box, else the text after its last `####`, else all of it."""
    if _BOX.search(reference):
        return extract_math_answer(reference) or ""
    _, marker, final = reference.rpartition(MARKER)
    return normalize_answer(final if marker else reference)


def answers_match(answer: str, reference: str) -> bool:
    """Equal normalised texts, or two numbers of equal value; an empty answer matches nothing."""
    if not answer or not reference:
        return False
    if answer == reference:
        return True
    value = _as_number(answer)
    return value is not None and value == _as_number(reference)


def normalize_answer(text: str) -> str:
    """The canonical text of one answer (the rules are in the module docstring); a text longer than
    MAX_ANSWER_CHARS is only stripped."""
    text = text.strip()
    if len(text) > MAX_ANSWER_CHARS:
        return text
    unit = _UNIT.search(text)
    if unit is not None and unit.start() > 0:
        text = text[: unit.start()]
    for _ in range(4):  # unwrap nested \text{\textbf{...}} from the inside out; bounded, not "until stable"
        text, n = _TEXT.subn(r"\1", text)
        if n == 0:
            break
    text = _DROPPED.sub("", text.replace("{,}", ","))
    text = _FRAC_ALIAS.sub(r"\\frac", text)
    text = _THOUSANDS.sub("", "".join(text.split())).rstrip(".")
    if _ASSIGNMENT.match(text) and len(text) > 2:
        text = text[2:]
    return _FRAC_SHORT.sub(r"\\frac{\1}{\2}", text)


def _box_content(text: str, start: int) -> str | None:
    """The argument of the box command ending at `start`: `{...}` with nesting, or one unbraced token."""
    i = _SPACES.match(text, start).end()
    if i < len(text) and text[i] == "{":
        depth = 0
        for token in _BRACE_OR_ESCAPE.finditer(text, i, min(len(text), i + MAX_ANSWER_CHARS + 2)):
            if token.group() == "{":
                depth += 1
            elif token.group() == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1: token.start()]
        return None  # unclosed, or longer than MAX_ANSWER_CHARS
    token = _UNBRACED.match(text, i)
    if token is None or len(token.group()) > MAX_ANSWER_CHARS:
        return None
    return token.group()


def _as_number(text: str) -> Fraction | None:
    if len(text) > _MAX_NUMBER_CHARS:
        return None
    match = _NUMBER.fullmatch(text)
    if match is None:
        return None
    numerator, denominator = (match["fn"], match["fd"]) if match["fn"] is not None else (match["n"], match["d"])
    try:
        value = Fraction(numerator) / Fraction(denominator or "1")
    except (ValueError, ZeroDivisionError):
        return None
    return -value if match["neg"] else value
