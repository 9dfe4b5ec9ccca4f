import builtins
import json
from pathlib import Path

import pytest

from engine.config import ConfigError, DataConfig, EvalConfig, load_config
from engine.data.gsm8k import Example
from engine.data.sources import load_examples

TINY = Path(__file__).resolve().parents[1] / "assets" / "gsm8k_tiny"


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def _parquet(path: Path, columns: dict) -> Path:
    pa = pytest.importorskip("pyarrow", reason="parquet tests need pyarrow (pip install pyarrow)")
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def _load(source: str, tmp_path: Path, heldout_size: int = 100, **keys):
    data = DataConfig(source=source, path=str(tmp_path), **keys)
    return load_examples(data, EvalConfig(heldout_size=heldout_size), seed=0)


def test_jsonl_source_with_custom_keys(tmp_path):
    _jsonl(tmp_path / "my_train.jsonl", [{"problem": "1+1?", "solution": "2", "id": 7},
                                         "", {"problem": "Half of 1?", "solution": r"\frac{1}{2}"}])
    _jsonl(tmp_path / "my_test.jsonl", [{"problem": f"{i}+0?", "solution": i} for i in range(5)])
    train, heldout = _load("jsonl", tmp_path, heldout_size=3, train_file="my_train.jsonl",
                           test_file="my_test.jsonl", prompt_key="problem", answer_key="solution")
    assert train == [Example("1+1?", "2"), Example("Half of 1?", r"\frac{1}{2}")]
    assert heldout == [Example("0+0?", "0"), Example("1+0?", "1"), Example("2+0?", "2")]  # numbers via str


def test_jsonl_source_default_keys_and_file_names(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"question": "Q?", "answer": "  as given #### 3 "}])
    _jsonl(tmp_path / "test.jsonl", [{"question": "R?", "answer": 2.5}])
    train, heldout = _load("jsonl", tmp_path)
    assert train == [Example("Q?", "  as given #### 3 ")]  # the answer is not parsed: the reward reads it
    assert heldout == [Example("R?", "2.5")]


def test_gsm8k_files_read_as_a_jsonl_source_keep_the_worked_answer():
    train, _ = load_examples(DataConfig(source="jsonl", path=str(TINY)), EvalConfig(heldout_size=1), seed=0)
    assert len(train) == 32 and train[0].answer.endswith("#### 72")


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", r"not valid JSON \(Expecting property name"),
        ("[1, 2]", "expected a JSON object with 'problem' and 'solution', got list"),
        ('{"solution": "3"}', r"missing key 'problem' \(each row needs 'problem' and 'solution'; "
                               r"set data.prompt_key"),
        ('{"problem": "Q?"}', r"missing key 'solution' .*set data.answer_key"),
        ('{"problem": 3, "solution": "3"}', r"'problem' \(the prompt\) must be a string, got int"),
        ('{"problem": null, "solution": "3"}', "must be a string, got null"),
        ('{"problem": "  ", "solution": "3"}', r"'problem' \(the prompt\) is empty"),
        ('{"problem": "Q?", "solution": ["3"]}',
         r"'solution' \(the answer\) must be a string or a number, got list"),
        ('{"problem": "Q?", "solution": true}', "must be a string or a number, got bool"),
        ('{"problem": "Q?", "solution": NaN}', "must be a finite number, got nan"),
        ('{"problem": "Q?", "solution": ""}', r"'solution' \(the answer\) is empty"),
        ('{"problem": "\\ud800", "solution": "3"}', "'problem' is not valid Unicode"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_jsonl_errors_name_the_file_and_line(tmp_path, bad_line, message):
    good = {"problem": "Q?", "solution": "3"}
    path = _jsonl(tmp_path / "train.jsonl", [good, "", bad_line, good])
    _jsonl(tmp_path / "test.jsonl", [good])
    with pytest.raises(ValueError, match=message) as info:
        _load("jsonl", tmp_path, prompt_key="problem", answer_key="solution")
    assert str(info.value).startswith(f"{path}:3: ")
    assert "\n" not in str(info.value)


def test_jsonl_bad_utf8_names_the_line(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(b'{"question": "Q?", "answer": "1"}\n{"question": "\xff"}\n')
    with pytest.raises(ValueError, match=f"{tmp_path / 'train.jsonl'}:2: not valid UTF-8"):
        _load("jsonl", tmp_path)


def test_jsonl_empty_file(tmp_path):
    (tmp_path / "train.jsonl").write_text("\n \n")
    with pytest.raises(ValueError, match=f"{tmp_path / 'train.jsonl'}: no examples"):
        _load("jsonl", tmp_path)


@pytest.mark.parametrize("source", ["jsonl", "parquet"])
@pytest.mark.parametrize("split, key", [("train", "data.train_file"), ("test", "data.test_file")])
def test_missing_file_names_it_and_the_keys(tmp_path, source, split, key):
    if split == "test":
        _jsonl(tmp_path / "train.jsonl", [{"question": "Q?", "answer": "1"}])
        if source == "parquet":
            _parquet(tmp_path / "train.parquet", {"question": ["Q?"], "answer": ["1"]})
    with pytest.raises(FileNotFoundError, match=f"set data.path .* or {key}") as info:
        _load(source, tmp_path)
    assert str(info.value).startswith(f"{tmp_path / f'{split}.{source}'}: {source} file not found")


def test_parquet_source_with_custom_keys(tmp_path):
    _parquet(tmp_path / "train.parquet", {"problem": ["1+1?", "2+2?"], "solution": ["2", "4"], "level": [1, 2]})
    _parquet(tmp_path / "test.parquet", {"problem": ["3+3?", "4+4?"], "solution": [6, 8]})
    train, heldout = _load("parquet", tmp_path, heldout_size=1, prompt_key="problem", answer_key="solution")
    assert train == [Example("1+1?", "2"), Example("2+2?", "4")]
    assert heldout == [Example("3+3?", "6")]


def test_parquet_default_keys_and_file_names(tmp_path):
    _parquet(tmp_path / "train.parquet", {"question": ["Q?"], "answer": [0.5]})
    _parquet(tmp_path / "test.parquet", {"question": ["R?"], "answer": ["x"]})
    assert _load("parquet", tmp_path) == ([Example("Q?", "0.5")], [Example("R?", "x")])


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"question": ["Q?"], "solution": ["1"]}, r": missing column 'answer' \(the answer; set data.answer_key"
                                                  r".*\); columns: question, solution"),
        ({"question": ["Q?", None], "answer": ["1", "2"]}, r": row 1: 'question' \(the prompt\) must be a string, "
                                                           r"got null"),
        ({"question": ["Q?", "R?"], "answer": ["1", None]}, ": row 1: .* must be a string or a number, got null"),
        ({"question": ["Q?", "R?"], "answer": [[1], [2]]}, ": row 0: .* must be a string or a number, got list"),
        ({"question": ["Q?", "R?"], "answer": [1.0, float("nan")]}, ": row 1: .* must be a finite number"),
        ({"question": [], "answer": []}, r": no examples \(the table has no rows\)"),
    ],
)
def test_parquet_errors_name_the_file_and_row(tmp_path, columns, message):
    path = _parquet(tmp_path / "train.parquet", columns)
    with pytest.raises(ValueError, match=message) as info:
        _load("parquet", tmp_path)
    assert str(info.value).startswith(str(path))


def test_a_file_that_is_not_parquet(tmp_path):
    pytest.importorskip("pyarrow", reason="parquet tests need pyarrow (pip install pyarrow)")
    (tmp_path / "train.parquet").write_text('{"question": "Q?", "answer": "1"}\n')
    with pytest.raises(ValueError, match=f"{tmp_path / 'train.parquet'}: not a readable Parquet file"):
        _load("parquet", tmp_path)


def test_parquet_without_pyarrow_or_pandas_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "train.parquet").write_bytes(b"PAR1")
    real_import = builtins.__import__

    def no_parquet_libraries(name, *args, **kwargs):
        if name.split(".")[0] in ("pyarrow", "pandas"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_parquet_libraries)
    message = r"data.source=parquet: .* needs pyarrow .*: pip install pyarrow"
    with pytest.raises(ConfigError, match=message) as info:
        _load("parquet", tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.path=/data/math"], r"^data\.path: not read by data\.source=synthetic; remove it"),
        (["data.source=gsm8k", "data.prompt_key=problem"], r"data\.prompt_key: not read by data\.source=gsm8k"),
        (["data.source=jsonl", "data.train_size=5"], r"data\.train_size: not read by data\.source=jsonl"),
        (["data.source=csv"], r"data\.source: got 'csv'; allowed: synthetic, gsm8k, jsonl, parquet"),
    ],
)
def test_config_rejects_keys_the_source_does_not_read(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, ["model.path=/m", *overrides])
    assert "\n" not in str(info.value)


def test_config_accepts_every_key_of_a_file_source():
    cfg = load_config(None, ["model.path=/m", "data.source=parquet", "data.path=/d", "data.train_file=a.parquet",
                             "data.test_file=b.parquet", "data.prompt_key=problem", "data.answer_key=solution"])
    assert (cfg.data.source, cfg.data.prompt_key, cfg.data.answer_key) == ("parquet", "problem", "solution")


def _dataset_dict(tmp_path: Path, train: dict, test: dict) -> Path:
    datasets = pytest.importorskip("datasets", reason="the datasets source needs datasets (pip install datasets)")
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(train), "test": datasets.Dataset.from_dict(test)}
                         ).save_to_disk(str(folder))
    return folder


def test_datasets_source_reads_a_save_to_disk_folder(tmp_path):
    folder = _dataset_dict(tmp_path, {"problem": ["1+1?", "2+2?"], "solution": ["2", "4"], "id": [1, 2]},
                           {"problem": [f"{i}*1?" for i in range(4)], "solution": [str(i) for i in range(4)],
                            "id": [0, 0, 0, 0]})
    data = DataConfig(source="datasets", path=str(folder), prompt_key="problem", answer_key="solution")
    train, heldout = load_examples(data, EvalConfig(heldout_size=3), seed=0)
    assert train == [Example("1+1?", "2"), Example("2+2?", "4")]
    assert heldout == [Example("0*1?", "0"), Example("1*1?", "1"), Example("2*1?", "2")]


def test_datasets_source_reads_the_splits_it_is_told(tmp_path):
    folder = _dataset_dict(tmp_path, {"question": ["Q?"], "answer": [3]}, {"question": ["R?"], "answer": [2.5]})
    data = DataConfig(source="datasets", path=str(folder), train_split="test", test_split="train")
    train, heldout = load_examples(data, EvalConfig(heldout_size=5), seed=0)
    assert train == [Example("R?", "2.5")] and heldout == [Example("Q?", "3")]  # numbers as their str
    with pytest.raises(ValueError, match=r"no split 'dev' \(splits: train, test\); set data.test_split"):
        load_examples(DataConfig(source="datasets", path=str(folder), test_split="dev"), EvalConfig(), seed=0)


def test_datasets_source_names_the_missing_key_and_the_row(tmp_path):
    folder = _dataset_dict(tmp_path, {"question": ["Q?", "R?"], "answer": ["1", None]},
                           {"prompt": ["S?"], "answer": ["2"]})
    with pytest.raises(ValueError, match=r"\[train\]: row 1: 'answer' \(the answer\) must be a string or a number, "
                                         r"got null"):
        load_examples(DataConfig(source="datasets", path=str(folder)), EvalConfig(), seed=0)
    data = DataConfig(source="datasets", path=str(folder), train_split="test")
    with pytest.raises(ValueError, match=r"saved \[test\]: row 0: missing key 'question' \(each row needs "
                                         r"'question' and 'answer'; set data.prompt_key"):
        load_examples(data, EvalConfig(), seed=0)


def test_datasets_source_reads_local_json_csv_and_parquet_files(tmp_path):
    pytest.importorskip("datasets")
    _jsonl(tmp_path / "train.jsonl", [{"q": "A?", "a": "1"}, {"q": "B?", "a": "2"}])
    (tmp_path / "test.csv").write_text("q,a\nC?,3\nD?,4\n")
    data = DataConfig(source="datasets", path=str(tmp_path), train_file="train.jsonl", test_file="test.csv",
                      prompt_key="q", answer_key="a")
    train, heldout = load_examples(data, EvalConfig(heldout_size=1), seed=0)
    assert train == [Example("A?", "1"), Example("B?", "2")] and heldout == [Example("C?", "3")]


def test_datasets_source_offline_with_a_hub_name_says_what_to_do(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as info:
        load_examples(DataConfig(source="datasets", path="openai/gsm8k"), EvalConfig(), seed=0)
    message = str(info.value)
    assert message.startswith("data.path: openai/gsm8k is neither a local folder nor reachable")
    assert "save_to_disk(FOLDER)" in message and "data.path=FOLDER" in message and "\n" not in message


def test_datasets_source_rejects_the_synthetic_only_key():
    with pytest.raises(ConfigError, match="data.train_size: not read by data.source=datasets"):
        load_config(None, ["model.path=m", "data.source=datasets", "data.train_size=5"])
    with pytest.raises(ConfigError, match="data.test_split: not read by data.source=jsonl"):
        load_config(None, ["model.path=m", "data.source=jsonl", "data.test_split=dev"])


def test_rows_may_carry_ready_messages_instead_of_a_question(tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    _jsonl(tmp_path / "train.jsonl", [{"messages": messages, "answer": "2"}])
    _jsonl(tmp_path / "test.jsonl", [{"messages": messages[1:], "answer": 2}])
    train, heldout = _load("jsonl", tmp_path, prompt_key="messages")
    assert train == [Example(messages, "2")] and heldout == [Example(messages[1:], "2")]


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], r"'messages' \(the prompt\) is an empty list of messages"),
        ([{"role": "user"}], r"'messages', message 0: expected an object with exactly 'role' and 'content', got \['role'\]"),
        (["hi"], "message 0: expected an object .* got str"),
        ([{"role": "tool", "content": "x"}], "message 0: role must be one of system, user, assistant, got 'tool'"),
        ([{"role": "user", "content": " "}], r"message 0: content must be a non-empty string, got str \(empty\)"),
        ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
         "the last message must be the user's .* got 'assistant'"),
    ],
)
def test_bad_messages_name_the_line_and_the_message(tmp_path, messages, message):
    path = _jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "Q"}], "answer": "1"},
                                             {"messages": messages, "answer": "1"}])
    with pytest.raises(ValueError, match=message) as info:
        _load("jsonl", tmp_path, prompt_key="messages")
    assert str(info.value).startswith(f"{path}:2: ")
