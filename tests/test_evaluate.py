from __future__ import annotations

import json

from engine.cli import main


def test_cadence_eval_writes_accuracy_json(tiny_model_dir, tmp_path):
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", str(tiny_model_dir), "--data", "synthetic", "--n", "6",
                 "--max-new-tokens", "4", "--backend", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    assert code == 0 and result["n"] == 6 and 0.0 <= result["accuracy"] <= 1.0
    assert result["data"] == "synthetic" and "no_answer_frac" in result


def test_cadence_eval_on_gsm8k_with_the_chat_template(tiny_model_dir, tmp_path):
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", str(tiny_model_dir), "--data", "gsm8k", "--data-path", "tests/assets/gsm8k_tiny",
                 "--prompt-format", "chat", "--n", "3", "--max-new-tokens", "4", "--backend", "cpu", "--out", str(out)])
    assert code == 0 and json.loads(out.read_text())["n"] == 3


def test_cadence_eval_names_a_missing_model_folder(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope"), "--backend", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err
