"""Causal LMs and tokenizers from local Hugging Face folders (never a hub): actor and frozen reference."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from engine.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(folder: Path, cfg: ModelConfig) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code, local_files_only=True)
    if tokenizer.pad_token_id is None:
        # Causal LMs often ship without a pad token; padding positions are masked everywhere we use them.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(folder: Path, cfg: ModelConfig, device: torch.device) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code, local_files_only=True,
        attn_implementation="sdpa")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model.to(device)


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A frozen reference policy: same weights as the actor at start, never trained, always in eval mode."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference
