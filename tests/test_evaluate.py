"""`cadence eval`: the JSON result, data sources, and where generation stops (generation_config ids, --stop)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
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


def spy_evaluate(monkeypatch) -> list[dict]:
    """evaluate() replaced by a recorder returning a fixed result: what `cadence eval` asked for, without
    generating (the items, the reward function, the keyword arguments, the engine)."""
    calls: list[dict] = []

    def fake(engine, items, decode, reward_fn, **kwargs):
        calls.append(dict(engine=engine, items=list(items), reward_fn=reward_fn, **kwargs))
        return engine_evaluate.EvalResult(accuracy=0.5, n=len(items), no_answer_frac=0.0, mean_response_len=1.0,
                                          truncated_frac=0.0)

    monkeypatch.setattr(engine_evaluate, "evaluate", fake)
    return calls


def base_argv(model_dir, tmp_path, *extra: str) -> list[str]:
    return ["eval", "--model", str(model_dir), "--backend", "cpu", "--out", str(tmp_path / "eval.json"), *extra]


def test_cadence_eval_default_max_new_tokens_suits_the_data(tiny_model_dir, tmp_path, monkeypatch):
    calls = spy_evaluate(monkeypatch)
    assert main(base_argv(tiny_model_dir, tmp_path, "--n", "2")) == 0
    assert main(base_argv(tiny_model_dir, tmp_path, "--n", "2", "--data", "gsm8k", "--data-path",
                          "tests/assets/gsm8k_tiny")) == 0
    assert main(base_argv(tiny_model_dir, tmp_path, "--n", "2", "--data", "gsm8k", "--data-path",
                          "tests/assets/gsm8k_tiny", "--max-new-tokens", "7")) == 0
    assert [c["max_new_tokens"] for c in calls] == [64, 512, 7]
    assert json.loads((tmp_path / "eval.json").read_text())["max_new_tokens"] == 7


def test_cadence_eval_reads_a_jsonl_file_with_its_own_keys_and_the_chat_system_prompt(tiny_model_dir, tmp_path,
                                                                                     monkeypatch):
    rows = [{"problem": f"What is {i} plus 1?", "solution": str(i + 1)} for i in range(4)]
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from engine.data import sources

    calls, rendered = spy_evaluate(monkeypatch), []
    real = sources.render_prompt
    monkeypatch.setattr(sources, "render_prompt", lambda question, tokenizer, fmt, system, instruction: rendered.append(
        (fmt, system)) or real(question, tokenizer, fmt, system, instruction))
    assert main(base_argv(tiny_model_dir, tmp_path, "--data", "jsonl", "--data-path", str(tmp_path), "--test-file",
                          "held.jsonl", "--prompt-key", "problem", "--answer-key", "solution", "--n", "3",
                          "--prompt-format", "chat", "--system-prompt", "Be brief.")) == 0
    items = calls[0]["items"]
    assert [i.reference for i in items] == ["1", "2", "3"] and "What is 0 plus 1?" in items[0].text
    assert rendered == [("chat", "Be brief.")] * 3


def test_cadence_eval_reads_a_datasets_folder_split(tiny_model_dir, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    split = datasets.Dataset.from_dict({"question": ["1+1?", "2+2?"], "answer": ["2", "4"]})
    datasets.DatasetDict({"validation": split}).save_to_disk(str(tmp_path / "saved"))
    calls = spy_evaluate(monkeypatch)
    assert main(base_argv(tiny_model_dir, tmp_path, "--data", "datasets", "--data-path", str(tmp_path / "saved"),
                          "--test-split", "validation")) == 0
    assert [i.reference for i in calls[0]["items"]] == ["2", "4"] and calls[0]["max_new_tokens"] == 512


def test_cadence_eval_flags_a_source_does_not_read_are_named(tiny_model_dir, tmp_path, capsys):
    assert main(base_argv(tiny_model_dir, tmp_path, "--data", "synthetic", "--prompt-key", "q")) == 2
    assert "--prompt-key: not read by --data=synthetic" in capsys.readouterr().err


def test_cadence_eval_scores_with_the_reward_it_is_given(tiny_model_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "my_rewards.py").write_text("def always_right(completion, reference):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = base_argv(tiny_model_dir, tmp_path, "--n", "3", "--max-new-tokens", "2", "--no-progress")
    assert main([*argv, "--reward", "my_rewards:always_right"]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["accuracy"] == 1.0 and result["reward"] == "my_rewards:always_right"
    assert main([*argv, "--reward", "my_rewards:missing"]) == 2
    assert "--reward 'my_rewards:missing': 'my_rewards' has no attribute 'missing'" in capsys.readouterr().err


def test_cadence_eval_loads_the_model_in_the_dtype_given(tiny_model_dir, tmp_path, monkeypatch):
    import torch

    from engine import models

    dtypes = []
    real = models.load_causal_lm
    monkeypatch.setattr(models, "load_causal_lm",
                        lambda *a, dtype, **k: dtypes.append(dtype) or real(*a, dtype=dtype, **k))
    calls = spy_evaluate(monkeypatch)
    assert main(base_argv(tiny_model_dir, tmp_path, "--n", "2", "--dtype", "bfloat16")) == 0
    assert dtypes == [torch.bfloat16] and calls[0]["engine"].model.dtype == torch.bfloat16
    assert json.loads((tmp_path / "eval.json").read_text())["dtype"] == "bfloat16"


def test_cadence_eval_engine_vllm_builds_the_vllm_rollout(tiny_model_dir, tmp_path, monkeypatch):
    import engine.build

    built = []

    class FakeEngine:
        def close(self):
            built.append("closed")

    def fake_build(cfg, backend, folder, tokenizer, precision, multiprocess):
        built.append((cfg.rollout.engine, cfg.model.dtype, str(precision.compute), multiprocess))
        return FakeEngine()

    monkeypatch.setattr(engine.build, "build_vllm_rollout", fake_build)
    calls = spy_evaluate(monkeypatch)
    assert main(base_argv(tiny_model_dir, tmp_path, "--n", "2", "--engine", "vllm", "--dtype", "float32")) == 0
    assert built == [("vllm", "float32", "torch.float32", False), "closed"]
    assert isinstance(calls[0]["engine"], FakeEngine)
    assert json.loads((tmp_path / "eval.json").read_text())["engine"] == "vllm"


def test_cadence_eval_warns_when_most_answers_were_truncated(tiny_model_dir, tmp_path, capsys):
    assert main(base_argv(tiny_model_dir, tmp_path, "--n", "4", "--max-new-tokens", "1")) == 0
    err = capsys.readouterr().err
    assert json.loads((tmp_path / "eval.json").read_text())["truncated_frac"] == 1.0
    assert "warning: 100% of the 4 evaluation answers were cut at --max-new-tokens=1 tokens" in err
    assert "eval" in err  # the progress bar (on by default)


def test_the_truncation_warning_needs_more_than_half(capsys):
    from engine import console

    console.enable()

    def result(frac):
        return engine_evaluate.EvalResult(accuracy=0.0, n=10, no_answer_frac=0.0, mean_response_len=1.0,
                                          truncated_frac=frac)

    assert not engine_evaluate.warn_if_truncated(result(0.5), 8, "eval.max_new_tokens")
    assert engine_evaluate.warn_if_truncated(result(0.6), 8, "eval.max_new_tokens")
    assert capsys.readouterr().err.count("raise eval.max_new_tokens") == 1
