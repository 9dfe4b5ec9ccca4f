"""Builders: turn a validated Config into the run's components. Plain functions, each given only its section."""
from __future__ import annotations

import dataclasses
import os
import socket
import random
from pathlib import Path

import torch

from backends import get_backend
from engine.config import Config, ConfigError
from engine.controller import Components
from engine.data.stream import PromptStream
from engine.data.sources import load_examples, prompt_items
from engine.default_model import resolve_model_path
from engine.lora import synced_parameters
from engine.models import frozen_copy, load_causal_lm, load_tokenizer
from engine.checkpoint import RunCheckpoints
from engine.parallel.checkpoint import ShardedCheckpoints, follower_handlers
from engine.parallel.control import ControlPlane
from engine.parallel.dist import LOCAL, Collectives, DistEnv
from engine.parallel.fsdp import LOCAL_GRAD_SYNC, FsdpGradSync
from engine.parallel.loading import empty_rollout_copy, load_sharded_actor, sharded_reference
from engine.parallel.spmd import TrainerGroup, follow
from engine.precision import Precision, resolve_precision, weight_specs
from engine.rewards.composite import build_rewards
from engine.rollout.fleet.dealer import share_window
from engine.rollout.fleet.fleet import Fleet
from engine.rollout.fleet.ranks import RankFleet, serve_generate
from engine.rollout.fleet.roster import FLEET_FILE
from engine.rollout.fleet.servers import NcclServerTransfer, ServerFleet
from engine.rollout.fleet.transports import make_transport
from engine.rollout.fleet.worker import WorkerSpec
from engine.rollout import RolloutEngine, build_rollout_engine, build_vllm_engine
from engine.rollout.multiturn import multiturn_engine
from engine.rollout.stopping import load_generation_config, stop_token_ids
from engine.tracking import check_installed
from engine.trainer import Trainer
from engine.trimodel import OverlongPenalty, TriModel, use_shared_prompt_attention


def build_components(cfg: Config, run_dir: Path, env: DistEnv | None = None,
                     control: ControlPlane | None = None) -> Components:
    """Everything rank 0 (or the one process) needs. `env`, `control`: this process is rank 0 of a torchrun
    launch, and its connection to the other ranks."""
    check_installed(cfg.run)  # a tracker named in run.loggers that cannot open fails before anything is built
    backend = get_backend(cfg.backend.name)
    split = cfg.pipeline.placement == "split"
    backend.set_threads(cfg.pipeline.trainer_threads if split else cfg.backend.threads)
    backend.seed_all(cfg.run.seed)
    random.seed(cfg.run.seed)
    device = backend.device(env.local_rank if env else 0)
    folder = resolve_model_path(cfg.model.path, cfg.run.cache_dir)
    tokenizer = load_tokenizer(folder, cfg.model)
    trainer, rollout_model = build_trainer(cfg, backend, device, folder, tokenizer, env)
    facts = startup_facts(backend, env, device)
    train_examples, heldout_examples = load_examples(cfg.data, cfg.eval, cfg.run.seed)
    stream = PromptStream.from_config(train_examples, tokenizer, cfg.data, cfg.run.seed)
    heldout = prompt_items(heldout_examples, tokenizer, cfg.data)
    ckpt_root = run_dir / "checkpoints"
    if env is None:
        checkpoints = RunCheckpoints(ckpt_root, trainer, tokenizer, cfg.run.keep_checkpoints)
    else:
        trainer = TrainerGroup(trainer, control, env.world_size)
        checkpoints = ShardedCheckpoints(ckpt_root, trainer, tokenizer, cfg.run.keep_checkpoints)
    rollout = build_rollout(cfg, backend, folder, rollout_model, tokenizer, trainer, env, run_dir,
                            facts)  # last: workers start
    stop_ids = stop_token_ids(tokenizer, load_generation_config(folder, rollout_model))  # eos + generation_config
    return Components(cfg, backend, device, tokenizer, trainer, rollout, stream, heldout, run_dir, checkpoints,
                      world_size=env.world_size if env else 1, stop_token_ids=stop_ids, startup_peak_bytes=tuple(f.peak for f in facts))


@dataclasses.dataclass(frozen=True, slots=True)
class RankFacts:
    """What rank 0 knows of each rank once it is built: its peak memory and where its engine runs (fleet.json)."""

    peak: int  # device bytes; on the CPU the process's peak resident set
    host: str
    pid: int
    device: str


def startup_facts(backend, env: DistEnv | None, device: torch.device) -> list[RankFacts]:
    """Every rank's facts once its models are built, in rank order. Under torchrun a collective: every rank
    calls it after build_trainer."""
    mine = RankFacts(int(backend.memory_stats()["peak_allocated"]), socket.gethostname(), os.getpid(), str(device))
    if env is None:
        return [mine]
    import torch.distributed as dist

    facts: list = [None] * env.world_size
    dist.all_gather_object(facts, mine)
    return facts


def build_trainer(cfg: Config, backend, device: torch.device, folder: Path, tokenizer,
                  env: DistEnv | None) -> tuple[Trainer, torch.nn.Module]:
    """This rank's Trainer, and the module a colocated rollout engine generates with: the actor itself, or
    a frozen compute-dtype copy under mixed precision or sharding."""
    precision = resolve_precision(cfg.model.dtype, backend.name)
    check_dtype(backend, precision, env)
    if env is None:
        actor, reference, rollout_model = _one_process_models(cfg, backend, device, folder, precision)
        grad_sync, comm = LOCAL_GRAD_SYNC, LOCAL
    else:
        actor, reference, rollout_model, precision = _sharded_models(cfg, backend, device, folder, precision, env)
        grad_sync, comm = FsdpGradSync(actor, env.world_size, device), Collectives(device, env.world_size)
    rewards = build_rewards(cfg.reward, device=device, dtype=precision.compute, tokenizer=tokenizer,
                            attention_kernel=backend.attention_kernel, load_model=env is None or env.is_root)
    trimodel = TriModel(actor, reference, rewards,
                        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                        temperature=cfg.rollout.temperature, layout=cfg.trainer.layout,
                        pad_id=tokenizer.pad_token_id, precision=precision, overlong=overlong_of(cfg))
    trainer = Trainer(trimodel, cfg.algorithm, cfg.optim, device, grad_sync, comm,
                      expected_normaliser=expected_normaliser(cfg), total_iterations=cfg.run.iterations)
    return trainer, rollout_model


def _attention(cfg: Config, backend):
    """What a model needs before use: the backend's shared-prompt kernel under the shared layout."""
    def prepare(model: torch.nn.Module) -> None:
        if cfg.trainer.layout == "shared":
            use_shared_prompt_attention(model, backend.attention_kernel)
    return prepare


def _wants_rollout_copy(cfg: Config, precision: Precision, sharded: bool) -> bool:
    return cfg.pipeline.placement == "colocated" and cfg.rollout.engine == "native" and (precision.mixed or sharded)


def _one_process_models(cfg: Config, backend, device, folder: Path, precision: Precision):
    """(actor, reference or None, the colocated rollout engine's module)."""
    if cfg.model.lora.enabled:
        return _lora_models(cfg, backend, device, folder, precision)
    actor = load_causal_lm(folder, cfg.model, device, dtype=precision.master, dropout=cfg.trainer.dropout)
    _attention(cfg, backend)(actor)
    rollout_model = frozen_copy(actor, precision.compute) if _wants_rollout_copy(cfg, precision, False) else actor
    # kl_coef 0: no reference at all; else a frozen compute-dtype copy (it never steps)
    reference = frozen_copy(actor, precision.compute) if cfg.algorithm.kl_coef > 0 else None
    return actor, reference, rollout_model


def _lora_models(cfg: Config, backend, device, folder: Path, precision: Precision):
    """LoRA (engine/lora.py): the base loaded once in the compute dtype, float32 adapters over it; the
    reference is the same module with its adapters off, and a rollout copy shares the base (only the
    adapters are copied in the compute dtype)."""
    from engine.lora import AdaptersOff, apply_lora, log_memory

    base = load_causal_lm(folder, cfg.model, device, dtype=precision.compute, dropout=cfg.trainer.dropout)
    actor = apply_lora(base, cfg.model.lora, folder, precision.master)
    _attention(cfg, backend)(actor)
    log_memory(actor, with_reference=cfg.algorithm.kl_coef > 0)
    rollout_model = actor
    if _wants_rollout_copy(cfg, precision, False):
        rollout_model = frozen_copy(actor, precision.compute, share_frozen=True)
    reference = AdaptersOff(actor) if cfg.algorithm.kl_coef > 0 else None
    return actor, reference, rollout_model


def _sharded_models(cfg: Config, backend, device, folder: Path, precision: Precision, env: DistEnv):
    """(actor, reference, rollout module or None, precision) under FSDP2: rank 0 reads the weights once and
    every rank keeps its shards (engine/parallel/loading.py); the reference is sharded like the actor."""
    if cfg.model.lora.enabled:
        return _sharded_lora_models(cfg, backend, device, folder, precision)
    prepare = _attention(cfg, backend)
    actor, sharded, full = load_sharded_actor(folder, cfg.model, device, precision, cfg.trainer.dropout,
                                              is_root=env.is_root, prepare=prepare)
    rollout_model = None
    if full is not None and _wants_rollout_copy(cfg, precision, True):
        prepare(full)
        rollout_model = frozen_copy(full, precision.compute).to(device)
    del full
    reference = None
    if cfg.algorithm.kl_coef > 0:
        reference = sharded_reference(folder, cfg.model, device, actor, precision, prepare)
    return actor, reference, rollout_model, sharded


def _sharded_lora_models(cfg: Config, backend, device, folder: Path, precision: Precision):
    """LoRA under FSDP2 (engine/parallel/lora.py): sharded float32 adapters over a whole compute-dtype base on
    every rank; each colocated rank's rollout module shares that base; the reference is the adapters off."""
    from engine.lora import AdaptersOff, log_memory
    from engine.parallel.lora import load_sharded_lora_actor

    actor, sharded, rollout_model = load_sharded_lora_actor(
        folder, cfg.model, device, precision, cfg.trainer.dropout, _attention(cfg, backend),
        rollout_copy=_wants_rollout_copy(cfg, precision, True))
    log_memory(actor, with_reference=cfg.algorithm.kl_coef > 0)
    reference = AdaptersOff(actor) if cfg.algorithm.kl_coef > 0 else None
    return actor, reference, rollout_model, sharded


def expected_normaliser(cfg: Config) -> int:
    """Sequences (seq_mean) or at most tokens (token_mean) one optimizer step averages over."""
    r, a = cfg.rollout, cfg.algorithm
    sequences = r.prompts_per_iteration // a.ppo_mini_batches * r.group_size
    return sequences * (r.max_new_tokens if a.loss_aggregation == "token_mean" else 1)


def every_rank_generates(cfg: Config, env: DistEnv | None) -> bool:
    """Colocated under torchrun with several ranks: each rank's device generates with its own engine, native
    or vLLM (in its own processes, on the rank's device), single- or multi-turn."""
    return (env is not None and env.world_size > 1 and cfg.pipeline.placement == "colocated"
            and not cfg.rollout.uses_servers)


def rank_vllm_devices(cfg: Config, backend, env: DistEnv | None) -> str:
    """rollout.vllm.devices, or where every rank generates, this rank's own accelerator for its vLLM engine
    (the local_rank-th visible device; on the CPU nothing to set)."""
    if not every_rank_generates(cfg, env):
        return cfg.rollout.vllm.devices
    if cfg.rollout.vllm.devices:
        raise ConfigError("rollout.vllm.devices: when every torchrun rank generates (colocated), each rank's vLLM "
                          "engine takes that rank's device; leave it unset")
    if not backend.visible_devices_env:
        return ""
    visible = os.environ.get(backend.visible_devices_env)
    ids = visible.split(",") if visible else [str(i) for i in range(env.local_world_size)]
    return ids[env.local_rank]


@dataclasses.dataclass(slots=True)
class Follower:
    """A torchrun rank > 0: its trainer shard (and, when every rank generates, its rollout engine), following
    rank 0's commands until it says stop."""

    trainer: Trainer
    control: ControlPlane
    ckpt_root: Path
    rollout: RolloutEngine | None = None  # native, multi-turn or vLLM: its generate takes a PromptSource
    prompt_timeout_s: float = 60.0  # the longest wait for rank 0's next prompts within a request

    def run(self) -> None:
        handlers = follower_handlers(self.trainer, self.ckpt_root)
        if self.rollout is not None:
            engine, trainer, control = self.rollout, self.trainer, self.control
            handlers["sync"] = lambda version: engine.load_weights(trainer.rollout_weights(), version)
            handlers["generate"] = lambda request: serve_generate(engine, control, request, self.prompt_timeout_s)
        try:
            follow(self.trainer, self.control, handlers)
        finally:
            if self.rollout is not None:  # a vLLM engine's processes end with the rank
                self.rollout.close()


def build_follower(cfg: Config, run_dir: Path, env: DistEnv, control: ControlPlane) -> Follower:
    backend = get_backend(cfg.backend.name)
    backend.set_threads(cfg.pipeline.trainer_threads if cfg.pipeline.placement == "split" else cfg.backend.threads)
    backend.seed_all(cfg.run.seed)
    device = backend.device(env.local_rank)
    folder = resolve_model_path(cfg.model.path, cfg.run.cache_dir)
    tokenizer = load_tokenizer(folder, cfg.model)
    generates = every_rank_generates(cfg, env)
    if not cfg.model.lora.enabled:  # the full model: no copy of rank 0's (each sync fills an empty one below)
        cfg = dataclasses.replace(cfg, pipeline=dataclasses.replace(cfg.pipeline, placement="split"))
    trainer, model = build_trainer(cfg, backend, device, folder, tokenizer, env)  # LoRA: the copy sharing its base
    rollout = None
    if generates and cfg.rollout.engine == "vllm":
        rollout = build_vllm_rollout(cfg, backend, folder, tokenizer, trainer.precision, multiprocess=True,
                                     devices=rank_vllm_devices(cfg, backend, env))
    elif generates:
        if model is None:
            model = empty_rollout_copy(folder, cfg.model, device, trainer.trimodel.actor, trainer.precision.compute,
                                       _attention(cfg, backend))
        rollout = build_rollout_engine("native", model, tokenizer, device,
                                       max_batch_sequences=cfg.rollout.max_batch_sequences)
        if cfg.env.enabled:  # the same environments as rank 0's engine
            rollout = multiturn_engine(rollout, cfg.env, tokenizer)
    startup_facts(backend, env, device)
    return Follower(trainer, control, run_dir / "checkpoints", rollout, cfg.backend.peer_timeout_s)


def overlong_of(cfg: Config) -> OverlongPenalty | None:
    a = cfg.algorithm
    return (cfg.rollout.max_new_tokens, a.overlong_buffer, a.overlong_penalty) if a.truncated == "penalty" else None


def check_dtype(backend, precision: Precision, env: DistEnv | None) -> None:
    if not backend.supports_dtype(precision.compute):
        raise ConfigError(f"model.dtype: {precision.compute} is not supported by backend {backend.name}")
    if precision.loss_scaling and env is not None:
        raise ConfigError("model.dtype: float16 trains with a single process only (its loss scaler does not "
                          "agree on skipped steps across ranks); use bfloat16 under torchrun")


def vllm_multiprocess(cfg: Config, env: DistEnv | None) -> bool:
    """vLLM in its own process: under split placement (it generates while the trainer trains), under torchrun
    (its in-process mode would take over the default process group) and with tensor parallelism."""
    v = cfg.rollout.vllm
    return v.multiprocess or cfg.pipeline.placement == "split" or v.tensor_parallel_size > 1 or env is not None


def build_vllm_rollout(cfg: Config, backend, folder: Path, tokenizer, precision: Precision,
                       multiprocess: bool, devices: str | None = None) -> RolloutEngine:
    """vLLM on `devices` (None: rollout.vllm.devices)."""
    from engine.rollout.vllm import VllmOptions, logprobs_mode_for

    r, v = cfg.rollout, cfg.rollout.vllm
    try:
        mode = logprobs_mode_for(r.temperature, r.top_p, r.top_k)
    except ValueError as exc:
        raise ConfigError(f"rollout.engine=vllm: {exc}") from exc
    # On the CPU the utilization share is of host RAM, which vLLM's memory check refuses: 1 GiB of KV cache
    kv_gib = v.kv_cache_gib or (1.0 if backend.device_type == "cpu" else 0.0)
    options = VllmOptions(
        dtype=str(precision.compute).removeprefix("torch."), trust_remote_code=cfg.model.trust_remote_code,
        tensor_parallel_size=v.tensor_parallel_size, gpu_memory_utilization=v.gpu_memory_utilization,
        kv_cache_memory_bytes=int(kv_gib * 2**30) or None, enforce_eager=v.enforce_eager,
        max_model_len=v.max_model_len or None, max_num_seqs=r.max_batch_sequences, seed=cfg.run.seed,
        multiprocess=multiprocess, logprobs_mode=mode, devices=v.devices if devices is None else devices,
        devices_env=backend.visible_devices_env,
        step_timeout_s=r.stall_timeout_s, lora_rank=cfg.model.lora.rank, lora_alpha=cfg.model.lora.alpha)
    engine = build_vllm_engine(str(folder), tokenizer, options)
    if cfg.env.enabled:  # each turn a vLLM request continuing through the prefix cache
        from engine.rollout.vllm_multiturn import vllm_multiturn_engine

        engine = vllm_multiturn_engine(engine, cfg.env, tokenizer)
    return engine


def build_rollout(cfg: Config, backend, folder: Path, model: torch.nn.Module, tokenizer, trainer,
                  env: DistEnv | None = None, run_dir: Path | None = None,
                  facts: list[RankFacts] | None = None) -> RolloutEngine:
    """pipeline.placement=colocated: the native engine generating with `model` (the actor itself, or its
    compute-dtype copy, synced from the masters each iteration), or vLLM; under torchrun with several ranks,
    the fleet of that engine and one on every other rank (engine/rollout/fleet/ranks.py).
    split: a fleet of rollout worker processes (engine/rollout/fleet/), each with its own copy of the model from
    the same folder, its own threads (pipeline.rollout_threads) and, on accelerators, its device
    (pipeline.rollout_devices); weights reach them all by the backend's transport, sent once."""
    precision = trainer.precision
    if cfg.rollout.uses_servers:
        return build_server_fleet(cfg, backend, tokenizer, run_dir)
    if cfg.rollout.engine == "vllm" or cfg.pipeline.placement == "colocated":
        engine = local_rollout_engine(cfg, backend, folder, model, tokenizer, precision, env)
        return rank_fleet(cfg, engine, trainer, env, run_dir, facts) if every_rank_generates(cfg, env) else engine
    eos = tokenizer.eos_token_id
    devices = rollout_devices(cfg, backend, env)
    compute_model = dataclasses.replace(cfg.model, dtype=str(precision.compute).removeprefix("torch."))
    specs = [WorkerSpec(model_dir=str(folder), model=compute_model,
                        attention_kernel=backend.attention_kernel if cfg.trainer.layout == "shared" else None,
                        device=str(device), threads=cfg.pipeline.rollout_threads, eos_token_id=eos,
                        max_batch_sequences=cfg.rollout.max_batch_sequences, env=cfg.env if cfg.env.enabled else None,
                        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
             for device in devices]
    return Fleet(specs, make_transport(backend, devices[0]),
                 weight_specs(synced_parameters(trainer.trimodel.actor), precision), window=in_flight_window(cfg),
                 sync_timeout_s=cfg.pipeline.sync_timeout_s, stall_timeout_s=cfg.rollout.stall_timeout_s,
                 restart=cfg.pipeline.restart_rollout, fleet_file=run_dir / FLEET_FILE if run_dir else None)


def local_rollout_engine(cfg: Config, backend, folder: Path, model: torch.nn.Module, tokenizer,
                         precision: Precision, env: DistEnv | None) -> RolloutEngine:
    """This process's engine: vLLM (in process, or its own processes), or the native one on `model`."""
    if cfg.rollout.engine == "vllm":
        return build_vllm_rollout(cfg, backend, folder, tokenizer, precision, multiprocess=vllm_multiprocess(cfg, env),
                                  devices=rank_vllm_devices(cfg, backend, env))
    engine = build_rollout_engine(cfg.rollout.engine, model, tokenizer, backend.device(),
                                  max_batch_sequences=cfg.rollout.max_batch_sequences)
    return multiturn_engine(engine, cfg.env, tokenizer) if cfg.env.enabled else engine


def rank_fleet(cfg: Config, engine, trainer, env: DistEnv, run_dir: Path | None,
               facts: list[RankFacts] | None) -> RankFleet:
    """Rank 0's `engine` and every other rank's (build_follower) as one fleet."""
    kind = "vllm" if cfg.rollout.engine == "vllm" else "multiturn" if cfg.env.enabled else "native"
    engines = [{"id": rank, "kind": "rank", "host": f.host, "device": f.device, "pid": f.pid, "engine": kind}
               for rank, f in enumerate(facts or [])]
    return RankFleet(engine, trainer.control, env.world_size, in_flight=cfg.rollout.in_flight,
                     stall_timeout_s=cfg.rollout.stall_timeout_s, peer_timeout_s=cfg.backend.peer_timeout_s,
                     fleet_file=run_dir / FLEET_FILE if run_dir and engines else None, engines=engines)


def build_server_fleet(cfg: Config, backend, tokenizer, run_dir: Path | None) -> ServerFleet:
    """rollout.servers (or rollout.servers_file): vLLM servers by URL; weights through vLLM's NCCL weight
    transfer from this process."""
    host, _, port = cfg.rollout.server_sync.rpartition(":")
    servers_file = Path(cfg.rollout.servers_file) if cfg.rollout.servers_file else None
    return ServerFleet(cfg.rollout.servers, tokenizer.eos_token_id, window=cfg.rollout.in_flight or 8,
                       servers_file=servers_file, request_timeout_s=cfg.rollout.stall_timeout_s,
                       transfer=NcclServerTransfer(host, int(port), backend.device()),
                       fleet_file=run_dir / FLEET_FILE if run_dir else None)


def rollout_devices(cfg: Config, backend, env: DistEnv | None) -> list[torch.device]:
    """Each split rollout worker's device: pipeline.rollout_devices, or the backend's default rollout device
    for every one of pipeline.rollout_workers (on the CPU they split the cores by threads)."""
    trainers = env.local_world_size if env else 1
    if cfg.pipeline.rollout_devices:
        return [backend.rollout_device(index, trainers) for index in cfg.pipeline.rollout_devices]
    return [backend.rollout_device(-1, trainers)] * cfg.pipeline.rollout_workers


def in_flight_window(cfg: Config) -> int:
    """Prompts per rollout worker in flight: rollout.in_flight, or (0) the engine's rows' worth
    (max_batch_sequences / G), at most an even share of the iteration's prompts so that no worker idles while
    the first holds them all. Under periodic_async at most half that share (but at least one micro-batch of
    groups): each worker's groups finish in at least two waves of full batches, and the trainer trains on one
    wave while the next generates even when every response runs to max_new_tokens. Smaller waves overlap more
    but pay more decode steps for the same tokens (docs/benchmarks.md, "Rollout fleet": on
    `engine.bench pipeline --fixed-length` one micro-batch per wave gave 0.61 x ideal_speedup in one run, two
    full waves a median of 0.72 x over 11 runs and 0.66-0.96 x in four ABBA runs, against a two-wave schedule
    bound of 0.75-0.80 x)."""
    r, workers = cfg.rollout, cfg.pipeline.worker_count
    if r.in_flight:
        return r.in_flight
    rows = r.max_batch_sequences // r.group_size
    if cfg.pipeline.schedule != "periodic_async":
        return share_window(r.prompts_per_iteration, workers, rows)
    half_share = share_window(r.prompts_per_iteration, 2 * workers, rows)  # each worker's share in two waves
    return max(half_share, min(rows, cfg.optim.micro_batch_size // r.group_size))
