"""Rollout engines: the RolloutEngine interface (base.py) and the factory that builds one by name.

The rollout side lives here whole: the engines (native.py; vllm.py with its weight hand-over vllm_weights.py
and LoRA vllm_lora.py; the multi-turn engines multiturn.py, vllm_multiturn.py, episode.py) and the fleet
(fleet/: the dealer, split-placement worker processes and their messages, the weight-sync transports, one
engine per torchrun rank in ranks.py, vLLM servers by URL in servers.py, fleet.json in roster.py).

"native" (native.py) generates with the Hugging Face module itself and runs anywhere torch does. "vllm"
(vllm.py) drives vLLM's engine on the model folder; vllm is imported only there, so `import engine` works
without it.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.rollout.base import RolloutEngine, SamplingParams
from engine.rollout.stopping import token_decoder

ENGINES = ("native", "vllm")

__all__ = ["ENGINES", "RolloutEngine", "SamplingParams", "build_rollout_engine", "build_vllm_engine"]


def build_rollout_engine(name: str, model: nn.Module, tokenizer, device: torch.device,
                         max_batch_sequences: int = 256) -> RolloutEngine:
    """The rollout engine `name` generating with `model`; eos and pad ids come from `tokenizer`, and so does the
    decode that stop strings are matched on (called only when a request has stop strings). The model's other
    stop ids (generation_config) travel in each request's SamplingParams (stopping.stop_token_ids).

    A tokenizer without a pad token pads with eos (padding is masked, so its id never matters).
    """
    if name == "native":
        from engine.rollout.native import NativeRolloutEngine

        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("build_rollout_engine: the tokenizer has no eos_token_id; generation could never stop")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        return NativeRolloutEngine(model, eos_token_id=eos, pad_token_id=pad, device=device,
                                   max_batch_sequences=max_batch_sequences, decode=token_decoder(tokenizer))
    if name == "vllm":
        raise ValueError("rollout.engine=vllm generates from the model folder: use build_vllm_engine")
    raise ValueError(f"unknown rollout engine {name!r}; allowed: {', '.join(ENGINES)}")


def build_vllm_engine(model_dir, tokenizer, options) -> RolloutEngine:
    """vLLM on the Hugging Face folder `model_dir` (engine/rollout/vllm.py; vllm is imported there, lazily)."""
    from engine.rollout.vllm import VllmRolloutEngine

    if tokenizer.eos_token_id is None:
        raise ValueError("build_vllm_engine: the tokenizer has no eos_token_id; generation could never stop")
    return VllmRolloutEngine(model_dir, tokenizer.eos_token_id, options)
