"""Which examples a run trains and evaluates on, by `data.source` (engine/config.py DataConfig)."""
from __future__ import annotations

from pathlib import Path

from engine.config import GSM8K_PATH, DataConfig, EvalConfig
from engine.data.gsm8k import load_jsonl
from engine.data.prompts import encode_prompt, render_prompt
from engine.data.synthetic import make_split
from engine.types import PromptItem

SYNTHETIC_TRAIN_SIZE = 20000


def load_examples(data: DataConfig, eval_cfg: EvalConfig, seed: int) -> tuple[list, list]:
    """(train examples, held-out examples): synthetic splits, or GSM8K train / first N of test."""
    if data.source == "synthetic":
        train_size = data.train_size if data.train_size is not None else SYNTHETIC_TRAIN_SIZE
        return make_split("train", train_size, seed), make_split("heldout", eval_cfg.heldout_size, seed=0)
    folder = Path(data.path if data.path is not None else GSM8K_PATH)
    train = load_jsonl(folder / (data.train_file or "train.jsonl"))
    heldout = load_jsonl(folder / (data.test_file or "test.jsonl"))[: eval_cfg.heldout_size]
    return train, heldout


def prompt_items(examples: list, tokenizer, data: DataConfig) -> list[PromptItem]:
    items = []
    for i, ex in enumerate(examples):
        text = render_prompt(ex.question, tokenizer, data.prompt_format, data.system_prompt)
        ids = encode_prompt(text, tokenizer, data.prompt_format)
        items.append(PromptItem(index=i, prompt_ids=ids, reference=ex.answer, text=text))
    return items
