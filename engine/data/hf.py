"""Hugging Face `datasets` as a prompt source: `data.source: datasets`.

Where the rows come from, in this order:

    data.train_file / data.test_file   local json, jsonl, csv or parquet files (relative to data.path when it is
                                       set), read with datasets.load_dataset(<format>, data_files=...)
    data.path, a folder                written by `save_to_disk`: a DatasetDict holding the splits data.train_split
                                       (default "train") and data.test_split (default "test")
    data.path, "org/name"              a dataset on the Hugging Face hub (online only; `datasets` caches it)

Rows are read like the jsonl source's (engine/data/table.py): the prompt under data.prompt_key (default
"question"), the reference answer under data.answer_key (default "answer"), and every error names the split,
the row (counted from 0) and the key. `datasets` is imported only here, when such a source is read.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from engine.config import ConfigError, DataConfig
from engine.data.gsm8k import Example
from engine.data.table import MISSING, row_example

FILE_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
PROMPT_KEY, ANSWER_KEY = "question", "answer"
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def load_split(data: DataConfig, split: Literal["train", "test"]) -> list[Example]:
    """The examples of one split (`split` is the role: train, or test = held out)."""
    name = (data.train_split or "train") if split == "train" else (data.test_split or "test")
    dataset, where = _open(data, split, name)
    prompt_key = data.prompt_key if data.prompt_key is not None else PROMPT_KEY
    answer_key = data.answer_key if data.answer_key is not None else ANSWER_KEY
    if len(dataset) == 0:
        raise ValueError(f"{where}: no examples (the split has no rows)")
    present = [k for k in (prompt_key, answer_key) if k in dataset.column_names]
    dataset = dataset.select_columns(present)  # the other columns are never decoded
    return [row_example(row.get(prompt_key, MISSING), row.get(answer_key, MISSING), prompt_key, answer_key,
                        f"{where}: row {i}") for i, row in enumerate(dataset)]


def _open(data: DataConfig, split: str, name: str):
    """(the split as a datasets.Dataset, how errors name it)."""
    datasets = _import_datasets()
    file = data.train_file if split == "train" else data.test_file
    if file is not None:
        return _from_file(datasets, Path(data.path or ".") / file, split, name)
    if data.path is None:
        raise ConfigError("data.path: data.source=datasets needs data.path (a save_to_disk folder or a hub name "
                          "org/name) or data.train_file / data.test_file")
    path = Path(data.path)
    if path.is_dir():
        return _from_disk(datasets, path, split, name)
    if path.exists():
        raise ConfigError(f"data.path: {path} is a file; with data.source=datasets name files with "
                          f"data.train_file / data.test_file (data.path is then their folder)")
    return _from_hub(datasets, data.path, split, name)


def _from_file(datasets, path: Path, split: str, name: str):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data.{split}_file not found; set data.path to the folder that holds it")
    fmt = FILE_FORMATS.get(path.suffix)
    if fmt is None:
        raise ConfigError(f"data.{split}_file: {path.name}: expected a {', '.join(FILE_FORMATS)} file")
    try:
        return datasets.load_dataset(fmt, data_files={name: str(path)}, split=name), str(path)
    except Exception as exc:  # datasets' parse errors: say which file, in one line
        raise ValueError(f"{path}: not a readable {fmt} file ({type(exc).__name__}: {exc})".replace("\n", " ")
                         ) from exc


def _from_disk(datasets, path: Path, split: str, name: str):
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: not a folder written by save_to_disk ({exc})".replace("\n", " ")) from exc
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"{path}: holds one Dataset, not a DatasetDict with train and test splits; save "
                         f"DatasetDict({{'train': ..., 'test': ...}}) (e.g. dataset.train_test_split(test_size=200))")
    if name not in loaded:
        raise ValueError(f"{path}: no split '{name}' (splits: {', '.join(loaded)}); set data.{split}_split")
    return loaded[name], f"{path} [{name}]"


def _from_hub(datasets, repo: str, split: str, name: str):
    advice = (f"on a machine that is online run datasets.load_dataset('{repo}').save_to_disk(FOLDER), copy FOLDER "
              f"here and set data.path=FOLDER (or export the splits to jsonl and use data.source=jsonl)")
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS):
        raise ConfigError(f"data.path: {repo} is neither a local folder nor reachable: the hub is offline "
                          f"({'/'.join(_OFFLINE_VARS)} is set); {advice}")
    try:
        return datasets.load_dataset(repo, split=name), f"{repo} [{name}]"
    except ValueError as exc:  # datasets' "Unknown split" and the like
        raise ValueError(f"{repo}: {exc}; set data.{split}_split".replace("\n", " ")) from exc
    except Exception as exc:  # no network, no such dataset, no access
        raise ConfigError(f"data.path: cannot load {repo} from the hub ({type(exc).__name__}: {exc}); if it is "
                          f"a local folder it does not exist; offline: {advice}".replace("\n", " ")) from exc


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.source=datasets: the datasets package is not installed; pip install datasets "
                          "(or pip install -e '.[data]')") from None
    return datasets
