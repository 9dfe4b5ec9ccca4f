"""Loading real models: dropout off, the model's own logits (final transforms included), unsupported heads."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM

from engine.config import ConfigError, ModelConfig
from engine.models import check_head_supported, load_causal_lm
from engine.packing import pack_expanded
from engine.trainer import decay_groups
from engine.trimodel import head_logits


def _gemma2(tmp_path):
    config = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=2.0,
                          attention_dropout=0.5)
    torch.manual_seed(0)
    Gemma2ForCausalLM(config).save_pretrained(tmp_path / "gemma2")
    return tmp_path / "gemma2"


def test_dropout_is_configured_off_unless_asked_for(tmp_path):
    folder = _gemma2(tmp_path)
    model = load_causal_lm(folder, ModelConfig(path=str(folder)), torch.device("cpu"))
    assert model.config.attention_dropout == 0.0
    kept = load_causal_lm(folder, ModelConfig(path=str(folder)), torch.device("cpu"), dropout=True)
    assert kept.config.attention_dropout == 0.5
    model.train()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    torch.testing.assert_close(model(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_logits_are_the_models_own_including_final_soft_capping(tmp_path):
    folder = _gemma2(tmp_path)
    model = load_causal_lm(folder, ModelConfig(path=str(folder)), torch.device("cpu"), dtype=torch.float64)
    prompt, responses = [5, 6, 7], [[8, 9], [10, 11, 12]]
    packed = pack_expanded([(prompt, responses)], pad_id=0)
    logits_UV = head_logits(model, packed)
    full = model(input_ids=packed.input_ids, position_ids=packed.position_ids).logits  # model's own, capped
    torch.testing.assert_close(logits_UV, full.flatten(0, 1)[packed.logit_positions], rtol=1e-12, atol=1e-12)
    assert logits_UV.abs().max() <= 2.0  # soft-capped at final_logit_softcapping


def test_a_model_that_cannot_select_logit_positions_is_refused_in_one_line(tmp_path):
    class NoKeep(torch.nn.Module):
        def forward(self, input_ids, position_ids=None):
            return None

    with pytest.raises(ConfigError, match=r"model.path: /m: NoKeep.forward takes no `logits_to_keep`") as info:
        check_head_supported(NoKeep(), "/m")
    assert "\n" not in str(info.value)


def test_no_weight_decay_on_biases_norms_and_embeddings(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    decay, no_decay = decay_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 and "embed" not in names[id(p)] for p in decay["params"])
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert "model.embed_tokens.weight" in skipped and any("norm" in n for n in skipped)
    assert any(n.endswith("bias") for n in skipped)
