"""Causal LMs and tokenizers from local Hugging Face folders (never a hub): actor, reference, rollout copy.

The actor is loaded in the master dtype (float32; engine/precision.py) whatever dtype the folder stores;
the reference and a colocated rollout copy are frozen copies in the compute dtype.
"""
from __future__ import annotations

import copy
import inspect
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from engine.config import ConfigError, ModelConfig

# Config attributes that hold dropout probabilities across transformers' model families.
_DROPOUT_SUFFIXES = ("dropout", "pdrop", "dropout_prob", "dropout_rate")


def load_tokenizer(folder: Path, cfg: ModelConfig) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code, local_files_only=True)
    if tokenizer.pad_token_id is None:
        # Causal LMs often ship without a pad token; padding positions are masked everywhere we use them.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(folder: Path, cfg: ModelConfig, device: torch.device, dtype: torch.dtype = torch.float32,
                   dropout: bool = False) -> PreTrainedModel:
    """The model of `folder` with parameters in `dtype`. dropout=False zeroes every dropout probability of
    its config, so train-mode forwards (needed by gradient checkpointing) compute the sampled distribution."""
    model = AutoModelForCausalLM.from_pretrained(
        folder, config=model_config(folder, cfg, dropout), dtype=dtype, trust_remote_code=cfg.trust_remote_code,
        local_files_only=True, attn_implementation="sdpa")
    check_head_supported(model, folder)
    prepare_for_training(model, cfg)
    return model.to(device)


def empty_causal_lm(folder: Path, cfg: ModelConfig, dtype: torch.dtype, dropout: bool = False) -> PreTrainedModel:
    """The model of `folder` on the meta device (shapes and dtypes, no storage, nothing read but its config):
    what every rank shards before the weights arrive (engine/parallel/loading.py)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(folder, cfg, dropout), dtype=dtype,
                                                 trust_remote_code=cfg.trust_remote_code, attn_implementation="sdpa")
    check_head_supported(model, folder)
    prepare_for_training(model, cfg)
    return model


def model_config(folder: Path, cfg: ModelConfig, dropout: bool = False):
    config = AutoConfig.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code, local_files_only=True)
    if not dropout:
        _zero_dropout(config)
    return config


def prepare_for_training(model: PreTrainedModel, cfg: ModelConfig) -> None:
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _zero_dropout(config) -> None:
    configs = [config] + [getattr(config, name) for name in ("text_config", "decoder") if hasattr(config, name)]
    for cfg in configs:
        for key, value in list(vars(cfg).items()):
            if key.endswith(_DROPOUT_SUFFIXES) and isinstance(value, float):
                setattr(cfg, key, 0.0)


def check_head_supported(model: PreTrainedModel, folder: Path) -> None:
    """The trainer reads logits through the model's own forward (`logits_to_keep` selects the positions), so
    final-logit transforms (Gemma soft-capping, Cohere logit_scale, Granite logits_scaling) are the model's.
    A model whose forward cannot select positions would need a head of our own: refuse it instead of training
    a different distribution than the one sampled."""
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        raise ConfigError(f"model.path: {folder}: {type(model).__name__}.forward takes no `logits_to_keep`, so "
                          f"Cadence cannot compute its logits the model's own way; this model family is unsupported")


def frozen_copy(model: PreTrainedModel, dtype: torch.dtype | None = None, share_frozen: bool = False) -> PreTrainedModel:
    """A frozen copy (eval mode, no grad) whose parameters are in `dtype` (default: theirs): the reference
    policy, or the colocated rollout engine's compute-dtype weights under mixed precision.

    Only parameters are cast. Buffers keep their dtype, as the trainer's forward uses them: `from_pretrained`
    keeps rotary frequencies (`inv_freq`) in float32 whatever the model's dtype, and a bfloat16 `inv_freq`
    would rotate by other angles (about a radian off near position 1000). Each parameter is cast while
    copying (a deepcopy memo), so no second master-dtype copy exists even for a moment; tied parameters
    stay tied. share_frozen: parameters that do not require grad (a LoRA base, which never steps and already is
    in the compute dtype) are shared with `model`, not copied, so only the adapters are duplicated."""
    memo = {id(p): torch.nn.Parameter(p.detach() if share_frozen and not p.requires_grad
                                      else p.detach().to(dtype or p.dtype, copy=True), requires_grad=False)
            for p in model.parameters()}
    copied = copy.deepcopy(model, memo).eval()
    copied.requires_grad_(False)
    return copied
