"""`cadence eval`: the JSON result, data sources, and where generation stops (generation_config ids, --stop)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import AutoTokenizer, GenerationConfig

from engine import evaluate as engine_evaluate
from engine.cli import main
from engine.rollout.stopping import StopStrings, token_decoder
from engine.types import Completion


def test_cadence_eval_writes_accuracy_json(tiny_model_dir, tmp_path):
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", str(tiny_model_dir), "--data", "synthetic", "--n", "6",
                 "--max-new-tokens", "4", "--backend", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    assert code == 0 and result["n"] == 6 and 0.0 <= result["accuracy"] <= 1.0
    assert result["data"] == "synthetic" and "no_answer_frac" in result and 0.0 <= result["truncated_frac"] <= 1.0


def test_cadence_eval_on_gsm8k_with_the_chat_template(tiny_model_dir, tmp_path):
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", str(tiny_model_dir), "--data", "gsm8k", "--data-path", "tests/assets/gsm8k_tiny",
                 "--prompt-format", "chat", "--n", "3", "--max-new-tokens", "4", "--backend", "cpu", "--out", str(out)])
    assert code == 0 and json.loads(out.read_text())["n"] == 3


def test_cadence_eval_names_a_missing_model_folder(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope"), "--backend", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err


def run_recorded(argv: list[str], monkeypatch) -> tuple[dict, dict, dict[int, Completion]]:
    """`cadence eval argv` with evaluate() spied on: (the JSON result, evaluate's keyword arguments, each
    prompt's greedy completion)."""
    real = engine_evaluate.evaluate
    seen: dict = {}

    def spy(engine, items, decode, reward_fn, **kwargs):
        generate = engine.generate

        def recording(prompts, params):
            for group in generate(prompts, params):
                seen["completions"][group.prompt.index] = group.completions[0]
                yield group

        engine.generate = recording
        seen.update(kwargs=kwargs, completions={})
        return real(engine, items, decode, reward_fn, **kwargs)

    monkeypatch.setattr(engine_evaluate, "evaluate", spy)
    out = Path(argv[argv.index("--out") + 1])
    assert main(argv) == 0
    return json.loads(out.read_text()), seen["kwargs"], seen["completions"]


def eval_argv(model_dir, tmp_path, *extra: str) -> list[str]:
    return ["eval", "--model", str(model_dir), "--data", "synthetic", "--n", "5", "--max-new-tokens", "8",
            "--backend", "cpu", "--out", str(tmp_path / "eval.json"), *extra]


def whole_characters(texts: list[str]) -> str:
    """The first two (else one) adjacent characters of `texts` that are whole: the mini model's answers are
    random bytes, mostly split UTF-8 characters."""
    for width in (2, 1):
        for text in texts:
            for k in range(len(text) - width + 1):
                if "\ufffd" not in text[k:k + width]:
                    return text[k:k + width]
    raise AssertionError(f"no whole character in {texts!r}")


def cut_at(completion: Completion, stop: int | None) -> tuple[list[int], bool]:
    if stop is None:
        return completion.token_ids, completion.finished
    return completion.token_ids[:stop + 1], True


def test_cadence_eval_stops_at_every_id_of_a_generation_config_list(tiny_model_dir, tmp_path, monkeypatch):
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    _, _, free = run_recorded(eval_argv(model_dir, tmp_path), monkeypatch)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    a, b = free[min(free)].token_ids[2], free[max(free)].token_ids[3]
    GenerationConfig(eos_token_id=[tokenizer.eos_token_id, a, b], pad_token_id=tokenizer.pad_token_id
                     ).save_pretrained(model_dir)  # a chat model's end-of-turn ids live here, not in the tokenizer
    result, kwargs, stopped = run_recorded(eval_argv(model_dir, tmp_path), monkeypatch)
    ids = kwargs["stop_token_ids"]
    assert ids == tuple(dict.fromkeys([tokenizer.eos_token_id, a, b]))
    for index, completion in free.items():
        stop = next((i for i, t in enumerate(completion.token_ids) if t in ids), None)
        assert (stopped[index].token_ids, stopped[index].finished) == cut_at(completion, stop)
    assert len(stopped[min(free)].token_ids) <= 3 and len(stopped[max(free)].token_ids) <= 4
    truncated = sum(not c.finished for c in stopped.values()) / len(stopped)
    assert result["truncated_frac"] == truncated < 1.0


def test_cadence_eval_stops_at_stop_strings(tiny_model_dir, tmp_path, monkeypatch):
    free_result, _, free = run_recorded(eval_argv(tiny_model_dir, tmp_path), monkeypatch)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    decode = token_decoder(tokenizer)
    string = whole_characters([decode(c.token_ids) for c in free.values()])
    result, kwargs, stopped = run_recorded(eval_argv(tiny_model_dir, tmp_path, "--stop", string, "--stop", "zz"),
                                           monkeypatch)
    assert kwargs["stop_strings"] == (string, "zz") and result["stop"] == [string, "zz"]
    matcher = StopStrings((string, "zz"), decode)
    for index, completion in free.items():
        cut = cut_at(completion, matcher.first_stop(completion.token_ids))
        assert (stopped[index].token_ids, stopped[index].finished) == cut
    assert any(c.finished and string in decode(c.token_ids) for c in stopped.values())
    assert result["truncated_frac"] < free_result["truncated_frac"] == 1.0
