"""random://<preset> (engine/default_model.py): a loadable random Qwen2 of a published shape whose stop token
comes with a fixed probability per step, and whose tokenizer encodes prompts exactly as the embedded one."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

from engine import default_model as dm
from engine.data.synthetic import format_prompt, make_split


@pytest.fixture(scope="module")
def tiny_random(tmp_path_factory):
    return dm.resolve_model_path("random://qwen2-tiny", tmp_path_factory.mktemp("cache"), log=lambda line: None)


def test_preset_is_a_loadable_tied_qwen2_with_a_full_vocabulary(tiny_random):
    spec = dm.RANDOM_PRESETS["qwen2-tiny"]
    assert tiny_random.name == "random-qwen2-tiny"
    model = AutoModelForCausalLM.from_pretrained(tiny_random)
    tokenizer = AutoTokenizer.from_pretrained(tiny_random)
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    assert len(tokenizer) == model.config.vocab_size == spec.vocab_size
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert isinstance(tokenizer.decode(list(range(spec.vocab_size))), str)  # every sampled id decodes
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_stop_token_probability_is_the_presets_at_every_position(tiny_random):
    model = AutoModelForCausalLM.from_pretrained(tiny_random).eval()
    eos = model.config.eos_token_id
    ids = torch.randint(2, model.config.vocab_size, (4, 200), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probs = model(ids).logits.softmax(-1)
    p_eos = probs[..., eos]
    target = dm.RANDOM_PRESETS["qwen2-tiny"].eos_probability
    assert p_eos.min() > 0.9 * target and p_eos.max() < 1.1 * target
    others = probs[..., eos + 2:]  # the rest stays near-uniform
    assert (others.max(-1).values / others.min(-1).values).max() < 2.0


def test_prompts_encode_as_with_the_embedded_tokenizer(tiny_random):
    padded = AutoTokenizer.from_pretrained(tiny_random)
    base = dm.build_tokenizer(dm.BuildSpec(), seed=0)
    for problem in make_split("train", 20, seed=3):
        text = format_prompt(problem.question) + problem.solution
        assert padded(text)["input_ids"] == base(text)["input_ids"]


def test_a_second_resolve_reuses_the_folder(tiny_random):
    stamp = (tiny_random / dm.STAMP_FILE).stat().st_mtime_ns
    again = dm.resolve_model_path("random://qwen2-tiny", tiny_random.parent, log=lambda line: None)
    assert again == tiny_random and (again / dm.STAMP_FILE).stat().st_mtime_ns == stamp


def test_unknown_preset_names_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match="random://qwen2-0.5b"):
        dm.resolve_model_path("random://gpt-7", tmp_path)


def test_half_billion_preset_has_qwen25_05b_shapes():
    """Counted on the meta device (nothing is built): Qwen2.5-0.5B has 494,032,768 parameters."""
    spec = dm.RANDOM_PRESETS["qwen2-0.5b"]
    with torch.device("meta"):
        model = Qwen2ForCausalLM(dm.random_config(spec, eos_id=0, pad_id=1))
    assert sum(p.numel() for p in model.parameters()) == 494_032_768
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads) == (896, 24, 14, 2)
