"""Which examples a run trains and evaluates on, by `data.source` (engine/config.py DataConfig)."""
from __future__ import annotations

from pathlib import Path

from engine.config import DataConfig, EvalConfig
from engine.data import calc
from engine.data.gsm8k import load_split
from engine.data.prompts import encode_prompt, render_prompt
from engine.data.synthetic import make_split
from engine.data.table import read_jsonl, read_parquet
from engine.types import PromptItem

SYNTHETIC_TRAIN_SIZE = 20000  # synthetic and calc: problems in the training stream when data.train_size is unset
PROMPT_KEY, ANSWER_KEY = "question", "answer"  # jsonl / parquet columns when data.prompt_key / answer_key unset
_TABLE_READERS = {"jsonl": read_jsonl, "parquet": read_parquet}


def load_examples(data: DataConfig, eval_cfg: EvalConfig, seed: int) -> tuple[list, list]:
    """(train examples, held-out examples): synthetic or calc splits, or the train split and the first
    `eval.heldout_size` rows of the test split of a gsm8k / jsonl / parquet / datasets source."""
    return load_train(data, seed), load_heldout(data, eval_cfg.heldout_size)


def load_train(data: DataConfig, seed: int) -> list:
    size = data.train_size if data.train_size is not None else SYNTHETIC_TRAIN_SIZE
    if data.source == "synthetic":
        return make_split("train", size, seed)
    if data.source == "calc":
        return calc.make_split("train", size, seed)
    return _load(data, "train")


def load_heldout(data: DataConfig, size: int) -> list:
    """The first `size` held-out examples (the synthetic and calc held-out splits do not depend on the run's seed)."""
    if data.source == "synthetic":
        return make_split("heldout", size, seed=0)
    if data.source == "calc":
        return calc.make_split("heldout", size, seed=0)
    return _load(data, "test")[:size]


def _load(data: DataConfig, split: str) -> list:
    if data.source == "gsm8k":
        return load_split(data, split)
    if data.source == "datasets":
        from engine.data.hf import load_split as load_hf_split  # imports `datasets` only when it is the source

        return load_hf_split(data, split)
    return _load_table(data, split)


def _load_table(data: DataConfig, split: str) -> list:
    """One split of a jsonl / parquet source: `data.path / data.<split>_file`; unset, the folder is the
    working directory and the file `<split>.<source>` (train.jsonl, test.parquet, ...)."""
    name = data.train_file if split == "train" else data.test_file
    folder = Path(data.path if data.path is not None else ".")
    path = folder / (name if name is not None else f"{split}.{data.source}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {data.source} file not found; set data.path to the folder that holds "
                                f"it, or data.{split}_file to the file")
    prompt_key = data.prompt_key if data.prompt_key is not None else PROMPT_KEY
    answer_key = data.answer_key if data.answer_key is not None else ANSWER_KEY
    return _TABLE_READERS[data.source](path, prompt_key, answer_key)


def prompt_items(examples: list, tokenizer, data: DataConfig) -> list[PromptItem]:
    items = []
    for i, ex in enumerate(examples):
        text = render_prompt(ex.question, tokenizer, data.prompt_format, data.system_prompt,
                             data.instruction)
        ids = encode_prompt(text, tokenizer, data.prompt_format)
        items.append(PromptItem(index=i, prompt_ids=ids, reference=ex.answer, text=text))
    return items
