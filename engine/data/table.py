"""Prompt / reference-answer tables in JSON-lines or Parquet files: `data.source: jsonl | parquet`.

Every row holds a prompt under `prompt_key` and a reference answer under `answer_key`; other columns are
ignored. The prompt is a non-empty string, or ready chat messages (`data.prompt_key: messages` for rows like
`{"messages": [{"role": "user", "content": ...}], "answer": ...}`; rendered with data.prompt_format=chat). The answer is kept as given, not parsed (no "####" rule: that
is the gsm8k source): a non-empty string as is, an int, float or decimal as its `str`; the reward decides how
to read it. Every error names the file and the line (jsonl, counted from 1, blank lines included) or the row
(parquet, counted from 0 as in `df.iloc`) and says what was expected.

Parquet needs pyarrow, or pandas with a Parquet engine; they are imported only when a Parquet file is read
and are not dependencies of Cadence (`pip install pyarrow`, or `pip install -e '.[data]'`).
"""
from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path

from engine.config import ConfigError
from engine.data.gsm8k import Example

MISSING = object()  # a key absent from a row (None is JSON null): row_example reports it by name


def read_jsonl(path: str | Path, prompt_key: str, answer_key: str) -> list[Example]:
    """One example per non-blank line `{prompt_key: str, answer_key: str | number, ...}`."""
    path = Path(path)
    examples = []
    with path.open("rb") as f:  # bytes, so a bad UTF-8 sequence is reported with its line number too
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
            except (ValueError, RecursionError) as exc:  # an int over Python's digit limit; deep nesting
                raise ValueError(f"{where}: not valid JSON ({type(exc).__name__}: {exc})") from exc
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object with '{prompt_key}' and '{answer_key}', "
                                 f"got {type(record).__name__}")
            examples.append(row_example(record.get(prompt_key, MISSING), record.get(answer_key, MISSING),
                                     prompt_key, answer_key, where))
    if not examples:
        raise ValueError(f"{path}: no examples (the file is empty)")
    return examples


def read_parquet(path: str | Path, prompt_key: str, answer_key: str) -> list[Example]:
    """One example per row of the columns `prompt_key` and `answer_key`."""
    path = Path(path)
    prompts, answers = _parquet_columns(path, prompt_key, answer_key)
    examples = [row_example(p, a, prompt_key, answer_key, f"{path}: row {i}")
                for i, (p, a) in enumerate(zip(prompts, answers))]
    if not examples:
        raise ValueError(f"{path}: no examples (the table has no rows)")
    return examples


def _parquet_columns(path: Path, prompt_key: str, answer_key: str) -> tuple[list, list]:
    """The two columns as Python lists, read with pyarrow, else pandas."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        try:
            names = pq.read_schema(path).names
        except Exception as exc:  # pyarrow's errors for a file that is not Parquet, or is cut short
            raise ValueError(_unreadable(path, exc)) from exc
        _check_columns(path, names, prompt_key, answer_key)
        try:
            table = pq.read_table(path, columns=[prompt_key, answer_key])
        except Exception as exc:
            raise ValueError(_unreadable(path, exc)) from exc
        return table.column(prompt_key).to_pylist(), table.column(answer_key).to_pylist()
    try:
        import pandas as pd
    except ImportError:
        raise ConfigError(f"data.source=parquet: reading {path} needs pyarrow (or pandas with a Parquet "
                          f"engine) and neither is installed: pip install pyarrow (or pip install -e '.[data]')"
                          ) from None
    try:
        frame = pd.read_parquet(path)
    except ImportError as exc:  # pandas without pyarrow or fastparquet
        raise ConfigError(f"data.source=parquet: reading {path} needs a Parquet engine for pandas: "
                          f"pip install pyarrow (or pip install -e '.[data]')") from exc
    except Exception as exc:
        raise ValueError(_unreadable(path, exc)) from exc
    _check_columns(path, [str(c) for c in frame.columns], prompt_key, answer_key)
    return frame[prompt_key].tolist(), frame[answer_key].tolist()


def _check_columns(path: Path, names: list[str], prompt_key: str, answer_key: str) -> None:
    for key, role in ((prompt_key, "prompt"), (answer_key, "answer")):
        if key not in names:
            raise ValueError(f"{path}: missing column '{key}' (the {role}; set data.{role}_key to the column "
                             f"that holds it); columns: {', '.join(names) or 'none'}")


def _unreadable(path: Path, exc: Exception) -> str:
    return f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})".replace("\n", " ")


def row_example(prompt: object, answer: object, prompt_key: str, answer_key: str, where: str) -> Example:
    """Check one row's two values; `MISSING` is a key the row does not have."""
    if prompt is MISSING or answer is MISSING:
        key, role = (prompt_key, "prompt") if prompt is MISSING else (answer_key, "answer")
        raise ValueError(f"{where}: missing key '{key}' (each row needs '{prompt_key}' and '{answer_key}'; "
                         f"set data.{role}_key if the {role} has another name)")
    if isinstance(prompt, (list, tuple)):
        prompt = chat_messages_value(prompt, f"{where}: '{prompt_key}'")
    elif not isinstance(prompt, str):
        raise ValueError(f"{where}: '{prompt_key}' (the prompt) must be a string, got {_kind(prompt)} (or a list "
                         f"of chat messages {{role, content}})")
    elif not prompt.strip():
        raise ValueError(f"{where}: '{prompt_key}' (the prompt) is empty")
    if isinstance(answer, (int, float, Decimal)) and not isinstance(answer, bool):
        if isinstance(answer, float) and not math.isfinite(answer) or (
                isinstance(answer, Decimal) and not answer.is_finite()):
            raise ValueError(f"{where}: '{answer_key}' (the answer) must be a finite number, got {answer}")
        answer = str(answer)
    elif not isinstance(answer, str):
        raise ValueError(f"{where}: '{answer_key}' (the answer) must be a string or a number, "
                         f"got {_kind(answer)}")
    if not answer.strip():
        raise ValueError(f"{where}: '{answer_key}' (the answer) is empty")
    texts = [m["content"] for m in prompt] if isinstance(prompt, list) else [prompt]
    for key, text in [(prompt_key, t) for t in texts] + [(answer_key, answer)]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate from a JSON "\ud800" escape: no tokenizer takes it
            raise ValueError(f"{where}: '{key}' is not valid Unicode ({exc.reason} at character {exc.start})"
                             ) from exc
    return Example(question=prompt, answer=answer)


CHAT_ROLES = ("system", "user", "assistant")


def chat_messages_value(messages: list | tuple, where: str) -> list[dict[str, str]]:
    """Ready chat messages: a non-empty list of {"role": system | user | assistant, "content": non-empty str}
    ending in a user turn (the model writes the next one); extra keys in a message are an error."""
    if not messages:
        raise ValueError(f"{where} (the prompt) is an empty list of messages")
    checked = []
    for i, message in enumerate(messages):
        at = f"{where}, message {i}"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            got = sorted(message) if isinstance(message, dict) else _kind(message)
            raise ValueError(f"{at}: expected an object with exactly 'role' and 'content', got {got}")
        role, content = message["role"], message["content"]
        if role not in CHAT_ROLES:
            raise ValueError(f"{at}: role must be one of {', '.join(CHAT_ROLES)}, got {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"{at}: content must be a non-empty string, got {_kind(content)}"
                             f"{' (empty)' if isinstance(content, str) else ''}")
        checked.append({"role": role, "content": content})
    if checked[-1]["role"] != "user":
        raise ValueError(f"{where}: the last message must be the user's (the model answers it), got "
                         f"{checked[-1]['role']!r}")
    return checked


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__
