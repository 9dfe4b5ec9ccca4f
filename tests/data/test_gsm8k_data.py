import json
from pathlib import Path

import pytest

from engine.config import DataConfig
from engine.data.gsm8k import Example, load_jsonl, load_split

TINY = Path(__file__).resolve().parents[1] / "assets" / "gsm8k_tiny"


def test_loads_the_tiny_subset():
    train = load_jsonl(TINY / "train.jsonl")
    assert len(train) == 32
    assert train[0] == Example(
        question="Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        answer="72",
    )
    assert all(e.answer and "####" not in e.answer for e in train)
    test = load_split(DataConfig(source="gsm8k", path=str(TINY)), "test")
    assert len(test) == 32 and test[0] != train[0]


def _write(tmp_path, lines) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _row(question="Q?", answer="work\n#### 7"):
    return json.dumps({"question": question, "answer": answer})


def test_blank_lines_are_skipped_and_answers_stripped(tmp_path):
    path = _write(tmp_path, ["", _row(answer="a\n#### 1,000 "), "   ", _row(answer="#### x ####  -3")])
    assert load_jsonl(path) == [Example("Q?", "1,000"), Example("Q?", "-3")]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"answer": "#### 3"}), "missing key 'question'"),
        (json.dumps({"question": "Q?"}), "missing key 'answer'"),
        (json.dumps({"question": "Q?", "answer": 3}), "'answer' must be a string"),
        (json.dumps({"question": "Q?", "answer": "the answer is 3"}), "no '####'"),
        (json.dumps({"question": "Q?", "answer": "3 ####  "}), "nothing after"),
    ],
)
def test_errors_name_the_file_and_line(tmp_path, bad_line, message):
    path = _write(tmp_path, [_row(), "", bad_line, _row()])
    with pytest.raises(ValueError, match=message) as info:
        load_jsonl(path)
    assert f"{path}:3:" in str(info.value)


def test_bad_utf8_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(_row().encode() + b"\n" + b'{"question": "\xff"}\n')
    with pytest.raises(ValueError, match=f"{path}:2: not valid UTF-8"):
        load_jsonl(path)


def test_empty_file(tmp_path):
    for content in ("", "\n  \n"):
        path = tmp_path / "empty.jsonl"
        path.write_text(content)
        with pytest.raises(ValueError, match="no examples"):
            load_jsonl(path)


def test_missing_file_mentions_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path") as info:
        load_split(DataConfig(source="gsm8k", path=str(tmp_path / "nowhere")), "train")
    assert str(tmp_path / "nowhere" / "train.jsonl") in str(info.value)
