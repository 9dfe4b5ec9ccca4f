"""Builders: turn a validated Config into the run's components. Plain functions, each given only its section."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import torch

from backends import get_backend
from engine.config import Config, ConfigError
from engine.controller import Components
from engine.data.stream import PromptStream
from engine.data.sources import load_examples, prompt_items
from engine.default_model import resolve_model_path
from engine.models import frozen_copy, load_causal_lm, load_tokenizer
from engine.precision import Precision, compute_weights, resolve_precision
from engine.rewards import load_reward_fn
from engine.pipeline.remote import RemoteRolloutEngine
from engine.pipeline.worker import WorkerSpec
from engine.rollout import RolloutEngine, build_rollout_engine
from engine.rollout.stopping import load_generation_config, stop_token_ids
from engine.trainer import Trainer
from engine.trimodel import OverlongPenalty, TriModel, use_shared_prompt_attention


def build_components(cfg: Config, run_dir: Path) -> Components:
    backend = get_backend(cfg.backend.name)
    split = cfg.pipeline.placement == "split"
    backend.set_threads(cfg.pipeline.trainer_threads if split else cfg.backend.threads)
    backend.seed_all(cfg.run.seed)
    random.seed(cfg.run.seed)
    device = backend.device()
    folder = resolve_model_path(cfg.model.path, cfg.run.cache_dir)
    tokenizer = load_tokenizer(folder, cfg.model)
    precision = resolve_precision(cfg.model.dtype, backend.name)
    check_dtype(backend, precision)
    actor = load_causal_lm(folder, cfg.model, device, dtype=precision.master, dropout=cfg.trainer.dropout)
    if cfg.trainer.layout == "shared":
        use_shared_prompt_attention(actor, backend.attention_kernel)
    # kl_coef 0: no reference at all; else a frozen compute-dtype copy (it never steps)
    reference = frozen_copy(actor, precision.compute) if cfg.algorithm.kl_coef > 0 else None
    trimodel = TriModel(actor, reference, load_reward_fn(cfg.reward.function),
                        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                        temperature=cfg.rollout.temperature, layout=cfg.trainer.layout,
                        pad_id=tokenizer.pad_token_id, precision=precision, overlong=overlong_of(cfg))
    trainer = Trainer(trimodel, cfg.algorithm, cfg.optim, device)
    train_examples, heldout_examples = load_examples(cfg.data, cfg.eval, cfg.run.seed)
    stream = PromptStream(train_examples, tokenizer, prompt_format=cfg.data.prompt_format,
                          system_prompt=cfg.data.system_prompt, max_prompt_tokens=cfg.data.max_prompt_tokens,
                          seed=cfg.run.seed, shuffle=cfg.data.shuffle)
    heldout = prompt_items(heldout_examples, tokenizer, cfg.data)
    rollout = build_rollout(cfg, backend, folder, actor, tokenizer, precision)  # last: a worker may start here
    stop_ids = stop_token_ids(tokenizer, load_generation_config(folder, actor))  # eos + generation_config ids
    return Components(cfg, backend, device, tokenizer, trainer, rollout, stream, heldout, run_dir, stop_ids)


def overlong_of(cfg: Config) -> OverlongPenalty | None:
    a = cfg.algorithm
    return (cfg.rollout.max_new_tokens, a.overlong_buffer, a.overlong_penalty) if a.truncated == "penalty" else None


def check_dtype(backend, precision: Precision) -> None:
    if not backend.supports_dtype(precision.compute):
        raise ConfigError(f"model.dtype: {precision.compute} is not supported by backend {backend.name}")


def build_rollout(cfg: Config, backend, folder: Path, actor: torch.nn.Module, tokenizer,
                  precision: Precision) -> RolloutEngine:
    """pipeline.placement=colocated: the native engine generating with the actor module itself, or under mixed
    precision with a frozen compute-dtype copy of it (synced from the masters each iteration).
    split: a rollout worker process with its own copy of the model from the same folder, its own threads
    (pipeline.rollout_threads) and, on accelerators, the next device; weights move by the backend's transport."""
    if cfg.pipeline.placement == "colocated":
        model = frozen_copy(actor, precision.compute) if precision.mixed else actor
        return build_rollout_engine(cfg.rollout.engine, model, tokenizer, backend.device(),
                                    max_batch_sequences=cfg.rollout.max_batch_sequences)
    if cfg.rollout.engine != "native":
        raise ConfigError(f"pipeline.placement=split runs the native engine in its worker; rollout.engine="
                          f"{cfg.rollout.engine} is not supported there yet")
    eos = tokenizer.eos_token_id
    compute_model = dataclasses.replace(cfg.model, dtype=str(precision.compute).removeprefix("torch."))
    spec = WorkerSpec(model_dir=str(folder), model=compute_model,
                      attention_kernel=backend.attention_kernel if cfg.trainer.layout == "shared" else None,
                      device=str(backend.rollout_device()), threads=cfg.pipeline.rollout_threads, eos_token_id=eos,
                      max_batch_sequences=cfg.rollout.max_batch_sequences,
                      pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    return RemoteRolloutEngine(spec, backend.weight_sync_transport(),
                               compute_weights(actor.named_parameters(), precision),
                               sync_timeout_s=cfg.pipeline.sync_timeout_s, restart_once=cfg.pipeline.restart_rollout)
