"""End-to-end benchmark of one recipe on this machine: one JSON report, to set beside another machine's.

    cadence bench e2e RECIPE [key=value ...] --out report.json [--iterations N] [--warmup W] [--run-dir DIR]
    python -m engine.bench e2e ...                      (then: cadence bench compare A.json B.json --out DIR)

The recipe runs through `engine.train.run`, in this process, for W + N iterations (defaults 2 + 5) with both
evaluations off, into a temporary run folder (or DIR/<recipe name> with --run-dir, which keeps it). The report
is computed from the run's `metrics.jsonl` and `timeline.jsonl` over the last N iterations only: the first W
pay for compilation, allocator growth and the rollout worker's warm-up. Every field is defined in
docs/benchmarks.md ("End-to-end report"); the main ones:

    samples/s, tokens/s     completions (tokens) per second of wall clock; generation tokens/s over the rollout
                            engine's busy time, training tokens/s over the trainer's busy time
    stages_s                mean seconds per iteration of each `time/<stage>` metric
    pipeline                generation and trainer busy time, overlap fraction, weight sync, and
                            ideal_speedup = (T_gen + T_train) / max(T_gen, T_train)
    flops / mfu             model FLOPs (formula in FLOPS_FORMULA) over elapsed time x the device's peak
                            (`Backend.peak_flops`, null where unknown, e.g. on the CPU) x the devices used

The controller always writes a checkpoint after the last iteration (`run.checkpoint_every=0`); it is outside
the measured iterations. Prompt lengths are recomputed from the recipe's prompt stream, which is a pure
function of the data settings and the seed (the same stream `engine.build` builds).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from engine import metrics as M
from engine.config import Config, ConfigError

SCHEMA_VERSION = 1
# Keys the bench sets itself: a recipe may hold them, the command line may not (use the flags).
OWNED_KEYS = ("run.iterations", "run.output_dir", "run.name", "run.resume", "run.overwrite",
              "run.checkpoint_every", "run.keep_checkpoints", "eval.before", "eval.after", "eval.every")
FLOPS_FORMULA = ("N = parameters that multiply activations (all but the input embedding, unless it is tied to "
                 "the LM head); training FLOPs = (6 * algorithm.ppo_epochs + 2 if a reference model runs) * N * "
                 "trained tokens, trained tokens = each group's prompt once + every response token (the "
                 "shared-prompt layout's work); "
                 "generation FLOPs = 2 * N * (prompt tokens + generated tokens): one prefill per prompt and one "
                 "decode step per generated token. Attention-score FLOPs are not counted. MFU = (training + "
                 "generation FLOPs) / (wall seconds * peak FLOP/s of one device * devices used); "
                 "generation_mfu and training_mfu divide each part by its own busy seconds and devices.")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cadence bench e2e", description=__doc__.split("\n")[0])
    parser.add_argument("recipe", help="a YAML recipe, e.g. recipes/bench_e2e.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. backend.name=cuda")
    parser.add_argument("--out", required=True, help="where to write the JSON report")
    parser.add_argument("--iterations", type=int, default=5, help="measured iterations N (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="iterations W run first and left out of the figures")
    parser.add_argument("--run-dir", default=None, help="keep the run folder as RUN_DIR/<recipe name> (default: a "
                                                        "temporary folder, removed afterwards)")
    args = parser.parse_intermixed_args(argv)  # overrides may come after the options
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        report = bench(args.recipe, args.overrides, args.iterations, args.warmup, args.run_dir)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report is None:  # a following rank under torchrun: rank 0 writes the report
        return 0
    report["argv"] = ["e2e", *argv]
    from engine.runlog import write_json_atomic

    write_json_atomic(args.out, report)
    print(summary_line(report) + f" -> {args.out}")
    return 0


def bench(recipe: str, overrides: list[str], iterations: int, warmup: int, run_root: str | None) -> dict | None:
    """Run the recipe for warmup + iterations and return the report (see the module docstring); None on the
    following ranks of a torchrun launch."""
    from engine.config import load_config

    owned = [item.split("=", 1)[0] for item in overrides if item.split("=", 1)[0] in OWNED_KEYS]
    if owned:
        raise ConfigError(f"command line: {', '.join(owned)}: set by the bench (use --iterations, --warmup, "
                          f"--run-dir); not allowed as overrides")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and run_root is None:
        raise ConfigError("under torchrun every rank must name the same run folder: pass --run-dir")
    name = Path(recipe).stem
    with (tempfile.TemporaryDirectory(prefix="cadence-bench-e2e-") if run_root is None
          else nullcontext(run_root)) as root:
        extra = bench_overrides(Path(root), name, warmup + iterations)
        cfg = load_config(recipe, [*overrides, *extra])
        run = timed_run(cfg)
        if int(os.environ.get("RANK", "0")) != 0:
            return None
        run_dir = Path(cfg.run.output_dir) / cfg.run.name
        report = build_report(cfg, run, run_dir, warmup)
    report["recipe"] = {"path": str(recipe), "overrides": list(overrides), "bench_overrides": extra,
                        "config": dataclasses.asdict(cfg)}
    if run_root is not None:
        report["run_dir"] = str(run_dir)
    return report


def bench_overrides(root: Path, name: str, iterations: int) -> list[str]:
    return [f"run.output_dir={root}", f"run.name={name}", f"run.iterations={iterations}", "run.resume=false",
            "run.overwrite=true", "run.checkpoint_every=0", "run.keep_checkpoints=1", "eval.before=false",
            "eval.after=false", "eval.every=0"]


@dataclasses.dataclass(frozen=True, slots=True)
class RunContext:
    """What the bench learns around the run itself."""

    backend: Any
    model_dir: Path
    wall_s: float  # the whole run, model loading and the final checkpoint included
    load_before: float
    load_after: float
    memory: dict[str, int]


def timed_run(cfg: Config) -> RunContext:
    from backends import get_backend
    from engine.default_model import resolve_model_path
    from engine.train import run

    backend = get_backend(cfg.backend.name)
    model_dir = resolve_model_path(cfg.model.path, cfg.run.cache_dir)  # builds an embedded / random model first
    load_before = os.getloadavg()[0]
    backend.reset_peak_memory()
    start = time.perf_counter()
    run(cfg)
    wall = time.perf_counter() - start
    return RunContext(backend, model_dir, wall, load_before, os.getloadavg()[0], backend.memory_stats())


# ------------------------------------------------------------------------------------------- the report


def build_report(cfg: Config, ctx: RunContext, run_dir: Path, warmup: int) -> dict:
    from engine.controller import TIMELINE_SPANS_FILE
    from engine.timeline import read_timeline
    from engine.runlog import read_metrics

    lines = [line for line in read_metrics(run_dir) if line[M.ITERATION] > warmup]
    timeline = [t for t in read_timeline(run_dir / TIMELINE_SPANS_FILE) if t[0] > warmup]
    prompts = prompt_lengths(cfg, ctx.model_dir, warmup + len(lines))[warmup:]
    model = model_info(cfg, ctx.model_dir, ctx.backend.name)
    batch = batch_shape(cfg, lines, prompts)
    throughput, totals = throughput_figures(lines, prompts)
    pipeline = pipeline_figures(cfg, lines, timeline)
    devices = device_info(cfg, ctx.backend)
    return {
        "schema_version": SCHEMA_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "measurement": {"warmup_iterations": warmup, "measured_iterations": len(lines),
                        "measured_wall_s": totals["wall_s"], "run_wall_s": ctx.wall_s,
                        "load_avg_1min_before": ctx.load_before, "load_avg_1min_after": ctx.load_after},
        "device": devices, "software": software_versions(ctx.backend), "model": model, "batch": batch,
        "throughput": throughput, "stages_s": stage_means(lines), "pipeline": pipeline,
        "rollout_bound": rollout_bound(cfg), "memory": memory_figures(ctx),
        "flops": flops_figures(cfg, ctx.backend, model, totals, devices),
    }


def _mean(lines: list[dict], key: str) -> float | None:
    values = [line[key] for line in lines if line.get(key) is not None]
    return sum(values) / len(values) if values else None


def prompt_lengths(cfg: Config, model_dir: Path, iterations: int) -> list[list[int]]:
    """The prompt lengths (tokens) of each iteration's B prompts: the run's stream, rebuilt as engine.build
    builds it (a pure function of the data settings and the seed)."""
    from engine.data.sources import load_examples
    from engine.data.stream import PromptStream
    from engine.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir, cfg.model)
    train, _ = load_examples(cfg.data, cfg.eval, cfg.run.seed)
    stream = PromptStream.from_config(train, tokenizer, cfg.data, cfg.run.seed)
    B = cfg.rollout.prompts_per_iteration
    return [[len(p.prompt_ids) for p in stream.next_batch(B)] for _ in range(iterations)]


def model_info(cfg: Config, model_dir: Path, backend_name: str) -> dict:
    """Sizes from the folder's config; parameters counted on a meta-device instance (no weights loaded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.precision import resolve_precision

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=cfg.model.trust_remote_code,
                                        local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.model.trust_remote_code)
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    params = sum(p.numel() for p in model.parameters())  # tied weights once
    tied = head is embedding
    text = getattr(config, "text_config", None) or config
    return {"path": cfg.model.path, "model_type": config.model_type, "parameters": params,
            "matmul_parameters": params if tied else params - embedding.numel(), "tied_embeddings": tied,
            "layers": text.num_hidden_layers, "hidden_size": text.hidden_size,
            "intermediate_size": getattr(text, "intermediate_size", None),
            "attention_heads": text.num_attention_heads,
            "kv_heads": getattr(text, "num_key_value_heads", text.num_attention_heads), "vocab_size": text.vocab_size,
            "compute_dtype": _dtype_name(resolve_precision(cfg.model.dtype, backend_name).compute)}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def batch_shape(cfg: Config, lines: list[dict], prompts: list[list[int]]) -> dict:
    r = cfg.rollout
    flat = [n for batch in prompts for n in batch]
    response_max = [line[M.RESPONSE_LEN_MAX] for line in lines if line.get(M.RESPONSE_LEN_MAX) is not None]
    return {"prompts_per_iteration": r.prompts_per_iteration, "group_size": r.group_size,
            "samples_per_iteration": r.prompts_per_iteration * r.group_size,
            "prompt_len_mean": sum(flat) / len(flat), "prompt_len_max": max(flat),
            "response_len_mean": _mean(lines, M.RESPONSE_LEN),
            "response_len_max": max(response_max) if response_max else None,  # null until the run logs it
            "max_new_tokens": r.max_new_tokens, "truncated_frac": _mean(lines, M.TRUNCATED_FRAC),
            "micro_batch_size": cfg.optim.micro_batch_size, "layout": cfg.trainer.layout}


def throughput_figures(lines: list[dict], prompts: list[list[int]]) -> tuple[dict, dict]:
    """(report section, totals over the measured iterations)."""
    wall = sum(line[M.ITERATION_TIME] for line in lines)
    generated = sum(line[M.TOKENS_PER_S] * line[M.ITERATION_TIME] for line in lines)
    samples = sum(line[M.SAMPLES_PER_S] * line[M.ITERATION_TIME] for line in lines)
    prompt_tokens = sum(sum(batch) for batch in prompts)
    gen_busy = sum(line.get(M.GEN_BUSY_S) or 0.0 for line in lines)
    train_busy = sum(line.get(M.TRAIN_BUSY_S) or 0.0 for line in lines)
    totals = {"wall_s": wall, "generated_tokens": generated, "prompt_tokens": prompt_tokens,
              "trained_tokens": prompt_tokens + generated, "gen_busy_s": gen_busy, "train_busy_s": train_busy}
    times = [line[M.ITERATION_TIME] for line in lines]
    section = {"samples_per_s": samples / wall, "end_to_end_tokens_per_s": generated / wall,
               "generation_tokens_per_s": generated / gen_busy if gen_busy > 0 else None,
               "training_tokens_per_s": (prompt_tokens + generated) / train_busy if train_busy > 0 else None,
               "iteration_s_mean": wall / len(lines), "iteration_s_median": statistics.median(times),
               "generated_tokens_per_iteration": generated / len(lines),
               "trained_tokens_per_iteration": (prompt_tokens + generated) / len(lines)}
    return section, totals


def stage_means(lines: list[dict]) -> dict[str, float]:
    """Mean seconds per iteration of every `time/<stage>` metric (a stage absent in an iteration counts 0)."""
    prefix = M.stage_time("x")[:-1]
    stages = sorted({k for line in lines for k in line if k.startswith(prefix) and k != M.ITERATION_TIME})
    return {k[len(prefix):]: sum(line.get(k) or 0.0 for line in lines) / len(lines) for k in stages}


def pipeline_figures(cfg: Config, lines: list[dict], timeline: list) -> dict:
    gen, train = _mean(lines, M.GEN_BUSY_S) or 0.0, _mean(lines, M.TRAIN_BUSY_S) or 0.0
    return {"schedule": cfg.pipeline.schedule, "placement": cfg.pipeline.placement,
            "gen_busy_s": gen, "train_busy_s": train, "gen_idle_s": _mean(lines, M.GEN_IDLE_S),
            "train_idle_s": _mean(lines, M.TRAIN_IDLE_S), "overlap_frac": _mean(lines, M.OVERLAP_FRAC),
            "sync_s": _mean(lines, M.SYNC_S), "sync_weights_s": _mean(lines, M.stage_time("sync_weights")),
            "ideal_speedup": (gen + train) / max(gen, train) if max(gen, train) > 0 else None,
            "median_arrival_frac": _median_arrival(timeline)}


def _median_arrival(timeline: list) -> float | None:
    """When groups reach the trainer, as a share of the rollout: per iteration (median arrival - rollout start)
    / (last arrival - rollout start), averaged. Near 1: groups bunch up at the end (little to overlap); lower:
    they arrive spread over the rollout. An arrival is the end of a trainer `rollout` span (the last one ends the
    stream)."""
    fracs = []
    for _, window, spans in timeline:
        trainer = [s for s in spans if s.lane == "trainer"]
        arrivals = sorted(s.end_s for s in trainer if s.stage == "rollout")[:-1]
        syncs = [s.end_s for s in trainer if s.stage == "sync_weights"]
        start = max(syncs) if syncs else window[0]
        if arrivals and arrivals[-1] > start:
            fracs.append((statistics.median(arrivals) - start) / (arrivals[-1] - start))
    return sum(fracs) / len(fracs) if fracs else None


def rollout_bound(cfg: Config) -> dict:
    """What rollout.max_batch_sequences does to this recipe's B*G sequences (docs/benchmarks.md)."""
    r = cfg.rollout
    sequences = r.prompts_per_iteration * r.group_size
    return {"max_batch_sequences": r.max_batch_sequences, "sequences_per_iteration": sequences,
            "bounded": r.max_batch_sequences < sequences, "groups_in_flight": min(r.max_batch_sequences // r.group_size,
                                                                                  r.prompts_per_iteration),
            "waves": math.ceil(sequences / r.max_batch_sequences)}


def memory_figures(ctx: RunContext) -> dict:
    on_host = ctx.backend.device_type == "cpu"
    return {"peak_bytes": ctx.memory.get("peak_allocated"), "reserved_bytes": ctx.memory.get("reserved"),
            "kind": "host peak RSS of the trainer process" if on_host else
                    "device allocator peak of the trainer process (since reset_peak_memory, before the run)"}


# ---------------------------------------------------------------------------------- devices and FLOPs


def device_info(cfg: Config, backend) -> dict:
    """Devices used: the trainer's ranks (devices 0..LOCAL_WORLD_SIZE-1 of each node), plus the rollout worker's
    device when the split gives it one of its own (engine/build.py picks it the same way)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    own_rollout_device = (cfg.pipeline.placement == "split" and backend.device_type != "cpu"
                          and backend.rollout_device((cfg.pipeline.rollout_devices or [-1])[0], local).index >= local)
    return {"backend": backend.name, "name": backend.device_name(), "count_visible": backend.device_count(),
            "trainer_devices": world, "rollout_devices": cfg.pipeline.worker_count, "count_used": world + int(own_rollout_device),
            "host": platform.node(), "host_cpus": os.cpu_count(),
            "threads": {"backend": cfg.backend.threads, "rollout": cfg.pipeline.rollout_threads,
                        "trainer": cfg.pipeline.trainer_threads, "torch_now": torch.get_num_threads()}}


def flops_figures(cfg: Config, backend, model: dict, totals: dict, devices: dict) -> dict:
    n = model["matmul_parameters"]
    train_factor = 6 * cfg.algorithm.ppo_epochs + (2 if cfg.algorithm.kl_coef > 0 else 0)
    train_flops = train_factor * n * totals["trained_tokens"]
    gen_flops = 2 * n * (totals["prompt_tokens"] + totals["generated_tokens"])
    dtype = getattr(torch, model["compute_dtype"])
    peak = backend.peak_flops(dtype)

    def mfu(flops: float, seconds: float, count: int) -> float | None:
        return flops / (seconds * peak * count) if peak and seconds > 0 else None

    return {"formula": FLOPS_FORMULA, "matmul_parameters": n, "training_flops": train_flops,
            "generation_flops": gen_flops, "achieved_flops_per_s": (train_flops + gen_flops) / totals["wall_s"],
            "peak_flops_per_device": peak, "peak_dtype": model["compute_dtype"], "devices_used": devices["count_used"],
            "mfu": mfu(train_flops + gen_flops, totals["wall_s"], devices["count_used"]),
            "generation_mfu": mfu(gen_flops, totals["gen_busy_s"], devices["rollout_devices"]),
            "training_mfu": mfu(train_flops, totals["train_busy_s"], devices["trainer_devices"])}


def software_versions(backend) -> dict:
    import transformers

    def installed(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "vllm": installed("vllm"), "runtime": backend.runtime_versions(), "cadence_commit": _git_commit()}


def _git_commit() -> str | None:
    """The checkout's commit, with "+dirty" when tracked files differ from it; None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def summary_line(report: dict) -> str:
    t, f = report["throughput"], report["flops"]
    mfu = f"{f['mfu']:.3f}" if f["mfu"] is not None else "n/a"
    return (f"{report['device']['backend']} {report['device']['name']}: {t['samples_per_s']:.3g} samples/s, "
            f"{t['end_to_end_tokens_per_s']:.4g} tokens/s end to end, iteration {t['iteration_s_mean']:.3g} s "
            f"(mean of {report['measurement']['measured_iterations']}), MFU {mfu}")
