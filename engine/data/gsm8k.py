"""GSM8K (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems") from its JSON-lines files.

Each line is `{"question": ..., "answer": ...}` where the answer is worked text ending in `#### <number>`.
We keep the question and only that final number: GRPO needs the reference answer, not the worked solution.
Every format error names the file and the line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.config import GSM8K_PATH, DataConfig

MARKER = "####"


@dataclass(frozen=True, slots=True)
class Example:
    question: str | list[dict[str, str]]  # a string, or ready chat messages (jsonl / parquet / datasets rows)
    answer: str  # the final answer as written after '####', e.g. "72" or "1,000" (rewards normalise it)


def load_split(cfg: DataConfig, split: Literal["train", "test"]) -> list[Example]:
    """The examples of `cfg.path / cfg.train_file` or `cfg.path / cfg.test_file` (unset: train.jsonl,
    test.jsonl; an unset cfg.path is GSM8K_PATH)."""
    name = cfg.train_file if split == "train" else cfg.test_file
    return load_jsonl(Path(cfg.path if cfg.path is not None else GSM8K_PATH) / (name or f"{split}.jsonl"))


def load_jsonl(path: str | Path) -> list[Example]:
    """Read every non-blank line of a GSM8K-format file; raise on the first bad line, naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GSM8K file not found; set data.path to the folder that holds it "
                                f"(e.g. data.path=/data/gsm8k; file names: data.train_file, data.test_file)")
    examples = []
    with path.open("rb") as f:  # bytes, so a bad UTF-8 sequence is reported with its line number too
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{where}: not valid UTF-8 ({exc.reason})") from exc
            if line.strip():
                examples.append(_parse_line(line, where))
    if not examples:
        raise ValueError(f"{path}: no examples (the file is empty)")
    return examples


def _parse_line(line: str, where: str) -> Example:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with 'question' and 'answer', "
                         f"got {type(record).__name__}")
    for key in ("question", "answer"):
        if key not in record:
            raise ValueError(f"{where}: missing key '{key}' (each line needs 'question' and 'answer')")
        if not isinstance(record[key], str):
            raise ValueError(f"{where}: '{key}' must be a string, got {type(record[key]).__name__}")
    _, marker, final = record["answer"].rpartition(MARKER)
    if not marker:
        raise ValueError(f"{where}: answer has no '{MARKER}' before its final number")
    if not final.strip():
        raise ValueError(f"{where}: answer has nothing after its last '{MARKER}'")
    return Example(question=record["question"], answer=final.strip())
