"""Periodic asynchrony vs the synchronous schedule on one resource split: throughput, ideal speedup, agreement.

    python -m engine.bench pipeline [--json] [--iterations N] [--model PATH] [--prompts B] [--micro-batch-size M]
                                    [--max-batch-sequences S] [--backend cpu|cuda|ascend] [--max-new-tokens T]
                                    [--fixed-length] [--in-flight K] [--repeats R]

`--fixed-length`: every response runs to max_new_tokens (rollout.ignore_eos=true; algorithm.truncated=train so
the cut responses still train), on the TRL-shaped workload unless --prompts / --max-new-tokens say otherwise
(B=8, G=8, 64 tokens). All groups then take equally long; the default in-flight window (rollout.in_flight=0:
under periodic_async at most half the worker's prompts, engine/build.py:in_flight_window) is what makes them
finish in waves. `--in-flight K` sets rollout.in_flight instead.

One quickstart-like recipe (the embedded tiny-math model, synthetic problems, B=32, G=8, 48 new tokens, at most
32 sequences in flight) runs three ways in this process, each from the same seed and weights:

    split_sync      rollout worker process (1 thread) + trainer (1 thread); generate all, then train
    periodic_async  the same split; train on each micro-batch of groups while the worker generates the rest
    colocated_sync  one process, rollout and training in turn, each with all threads (rollout+trainer)

The two split runs alternate `--repeats` times in ABBA order (sync, async, async, sync, ...), so a host that
drifts slowly over the minutes of the bench weighs on both alike; colocated_sync runs once, last.

Figures, over iterations 2..N of every repeat (the first pays for the worker's start-up and warm-up):
    *_samples_per_s  completions per second of wall clock (sum of samples / sum of iteration times)
    speedup          async_samples_per_s / sync_samples_per_s
    ideal_speedup    (T_gen + T_train) / max(T_gen, T_train), T_gen = generation busy time and T_train =
                     trainer busy time (prompts, score, train, step) of the split_sync run, per iteration:
                     what perfect overlap would give, ignoring the sync barrier and the first/last group
    overlap_frac     periodic_async's pipeline/overlap_frac: share of the shorter phase hidden behind the longer
    async_over_colocated  async_samples_per_s / colocated_samples_per_s
    max_param_rel_diff  max over tensors of max|async - sync| / max|sync| of the final parameters (first repeats)
    schedule_bound_speedup  the split_sync run replayed through the periodic_async schedule: its groups
                     arrive when they did, each micro-batch costs what its score + train took, so this is
                     what periodic_async gives on two uncontended cores with this engine's arrival profile
                     (a GRPO group is complete only when its longest sample is, so arrivals bunch up late)
The micro-batch size (default 16 sequences = 2 groups) does not change the update; small micro-batches let
training start on the first groups. `--max-batch-sequences` bounds the rollout batch (continuous batching): with
all B*G sequences in flight at once every group finishes near the end of generation, and there is little left
to overlap; 32 (4 groups) makes groups arrive in waves through the iteration (docs/benchmarks.md has both).
Wall-clock figures on a shared host move with its load: the 1-minute load average before and after is
reported, and `host_parallelism` = 2 * t(one process) / t(two processes at once) of a fixed single-threaded
matmul loop, measured just before the runs: 2.0 when two cores are free for the two sides of the split, 1.0
when they have to share one (then no overlap can pay). Per-run details
(phase times, overlap) are under "runs".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine import metrics as M

GROUP_SIZE = 8  # G of the recipe
VARIANTS = {
    "split_sync": {"pipeline.placement": "split", "pipeline.schedule": "sync"},
    "periodic_async": {"pipeline.placement": "split", "pipeline.schedule": "periodic_async"},
    "colocated_sync": {"pipeline.placement": "colocated"},
}


@dataclass(frozen=True, slots=True)
class RunFigures:
    samples_per_s: float
    iteration_s: float  # mean over the measured iterations
    gen_busy_s: float
    train_busy_s: float
    sync_s: float
    overlap_frac: float


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.bench pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (and nothing else) on stdout")
    parser.add_argument("--iterations", type=int, default=8, help="iterations per run; the first is not measured")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each split variant, in ABBA order")
    parser.add_argument("--model", default="embedded://tiny-math", help="model folder or embedded://tiny-math")
    parser.add_argument("--prompts", type=int, default=None, help="B, prompts per iteration (32; 8 --fixed-length)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="T (48; 64 with --fixed-length)")
    parser.add_argument("--fixed-length", action="store_true", help="no eos: every response is T tokens long")
    parser.add_argument("--micro-batch-size", type=int, default=16, help="sequences per forward/backward")
    parser.add_argument("--rollout-threads", type=int, default=1)
    parser.add_argument("--trainer-threads", type=int, default=1)
    parser.add_argument("--max-batch-sequences", type=int, default=32,
                        help="rollout.max_batch_sequences: sequences in flight (continuous batching)")
    parser.add_argument("--in-flight", type=int, default=0,
                        help="rollout.in_flight: prompts per worker in flight (0: the engine's choice)")
    parser.add_argument("--backend", default="cpu", help="backend.name for all three runs (cpu, cuda, ascend)")
    parser.add_argument("--cache-dir", default=".cache/cadence")
    args = parser.parse_args(argv)
    if args.iterations < 2:
        parser.error("--iterations must be >= 2 (the first iteration is not measured)")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.prompts is None:
        args.prompts = 8 if args.fixed_length else 32
    if args.max_new_tokens is None:
        args.max_new_tokens = 64 if args.fixed_length else 48
    return args


def run_order(repeats: int) -> list[tuple[str, int]]:
    """(variant, repeat) in the order they run: the split pair in ABBA order, then colocated_sync once."""
    pairs = [("split_sync", "periodic_async")[::1 if r % 2 == 0 else -1] for r in range(repeats)]
    return [(variant, r) for r, pair in enumerate(pairs) for variant in pair] + [("colocated_sync", 0)]


def run_name(variant: str, repeat: int) -> str:
    return variant if repeat == 0 else f"{variant}-{repeat}"


def overrides(args: argparse.Namespace, model_dir: Path, out_dir: Path, variant: str, repeat: int = 0) -> list[str]:
    threads = args.rollout_threads + args.trainer_threads
    values = {
        "run.name": run_name(variant, repeat), "run.output_dir": str(out_dir), "run.iterations": args.iterations, "run.seed": 0,
        "run.progress": False, "run.checkpoint_every": 0, "backend.name": args.backend, "backend.threads": threads,
        "model.path": str(model_dir), "data.source": "synthetic", "rollout.prompts_per_iteration": args.prompts,
        "rollout.group_size": GROUP_SIZE, "rollout.max_batch_sequences": args.max_batch_sequences,
        "rollout.max_new_tokens": args.max_new_tokens, "rollout.in_flight": args.in_flight,
        "rollout.temperature": 1.0, "optim.lr": 5e-4,
        "optim.warmup_iterations": 3, "optim.micro_batch_size": args.micro_batch_size, "eval.before": False,
        "eval.after": False, "pipeline.rollout_threads": args.rollout_threads,
        "pipeline.trainer_threads": args.trainer_threads, **VARIANTS[variant]}
    if args.fixed_length:
        values |= {"rollout.ignore_eos": True, "algorithm.truncated": "train"}
    return [f"{key}={value}" for key, value in values.items()]


def figures(run_dirs: list[Path]) -> RunFigures:
    """Throughput and phase times over iterations 2..N of finished runs, pooled."""
    from engine.runlog import read_metrics

    lines = [line for run_dir in run_dirs for line in read_metrics(run_dir)[1:]]
    mean = lambda key: sum(line[key] for line in lines) / len(lines)
    samples = sum(line[M.SAMPLES_PER_S] * line[M.ITERATION_TIME] for line in lines)
    wall = sum(line[M.ITERATION_TIME] for line in lines)
    return RunFigures(samples_per_s=samples / wall, iteration_s=mean(M.ITERATION_TIME), gen_busy_s=mean(M.GEN_BUSY_S),
                      train_busy_s=mean(M.TRAIN_BUSY_S), sync_s=mean(M.SYNC_S), overlap_frac=mean(M.OVERLAP_FRAC))


def final_weights(run_dir: Path, iterations: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"iter_{iterations:06d}" / "model.safetensors"))


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item() for k in b)


def _matmul_loop(results) -> None:
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    for _ in range(20):  # warm-up
        a @ a
    start = time.perf_counter()
    for _ in range(400):
        a @ a
    results.put(time.perf_counter() - start)


def host_parallelism() -> float:
    """How many cores two single-threaded processes get at once here: 2 * t(alone) / t(two at once)."""
    import torch.multiprocessing as tmp

    ctx = tmp.get_context("spawn")
    results = ctx.Queue()

    def timed(n: int) -> float:
        procs = [ctx.Process(target=_matmul_loop, args=(results,)) for _ in range(n)]
        for proc in procs:
            proc.start()
        times = [results.get() for _ in procs]
        for proc in procs:
            proc.join()
        return max(times)

    return 2 * timed(1) / timed(2)


def replayed_iteration_s(window: tuple[float, float], spans: list, group_size: int, micro_batch_size: int) -> float:
    """One split_sync iteration's length had its groups been trained as they arrived (see the docstring).

    In the sync schedule the trainer's `rollout` spans end at each group's arrival (the last one at the end
    of the stream), `score` spans come one per group and `train` spans one per micro-batch, all in order.
    """
    trainer = sorted((s for s in spans if s.lane == "trainer"), key=lambda s: s.start_s)
    arrivals = [s.end_s for s in trainer if s.stage == "rollout"][:-1]
    scores = [s.end_s - s.start_s for s in trainer if s.stage == "score"]
    trains = [s.end_s - s.start_s for s in trainer if s.stage == "train"]
    step = sum(s.end_s - s.start_s for s in trainer if s.stage == "step")
    per_batch = max(1, micro_batch_size // group_size)  # uniform groups: micro_batches() takes this many
    end = window[0]
    for j, train in enumerate(trains):
        first, last = j * per_batch, min(len(arrivals), (j + 1) * per_batch)
        end = max(end, arrivals[last - 1]) + sum(scores[first:last]) + train
    return end + step - window[0]


def schedule_bound(run_dirs: list[Path], micro_batch_size: int) -> float:
    """sum of split_sync iteration times / sum of their replays, over iterations 2..N of every run."""
    from engine.controller import TIMELINE_SPANS_FILE
    from engine.timeline import read_timeline

    iterations = [it for run_dir in run_dirs for it in read_timeline(run_dir / TIMELINE_SPANS_FILE)[1:]]
    actual = sum(window[1] - window[0] for _, window, _ in iterations)
    replayed = sum(replayed_iteration_s(window, spans, GROUP_SIZE, micro_batch_size) for _, window, spans in iterations)
    return actual / replayed


def run_variants(args: argparse.Namespace, model_dir: Path, out_dir: Path) -> dict[str, RunFigures]:
    from engine.config import load_config
    from engine.train import run

    dirs: dict[str, list[Path]] = {variant: [] for variant in VARIANTS}
    for variant, repeat in run_order(args.repeats):
        print(f"[bench pipeline] {run_name(variant, repeat)} ...", file=sys.stderr)
        run(load_config(None, overrides(args, model_dir, out_dir, variant, repeat)))
        dirs[variant].append(out_dir / run_name(variant, repeat))
    return {variant: figures(run_dirs) for variant, run_dirs in dirs.items()}


def report(args: argparse.Namespace, results: dict[str, RunFigures], param_diff: float, bound: float,
           load: tuple, parallelism: float) -> dict:
    sync, periodic = results["split_sync"], results["periodic_async"]
    ideal = (sync.gen_busy_s + sync.train_busy_s) / max(sync.gen_busy_s, sync.train_busy_s)
    speedup = periodic.samples_per_s / sync.samples_per_s
    return {"sync_samples_per_s": sync.samples_per_s, "async_samples_per_s": periodic.samples_per_s,
            "speedup": speedup, "ideal_speedup": ideal, "speedup_over_ideal": speedup / ideal,
            "schedule_bound_speedup": bound, "schedule_bound_over_ideal": bound / ideal,
            "colocated_samples_per_s": results["colocated_sync"].samples_per_s,
            "async_over_colocated": periodic.samples_per_s / results["colocated_sync"].samples_per_s,
            "overlap_frac": periodic.overlap_frac, "max_param_rel_diff": param_diff,
            "load_avg_1min_before": load[0], "load_avg_1min_after": load[1], "host_parallelism": parallelism,
            "settings": {"iterations": args.iterations, "measured_iterations": args.iterations - 1,
                         "repeats": args.repeats,
                         "prompts": args.prompts, "group_size": GROUP_SIZE, "max_new_tokens": args.max_new_tokens,
                         "fixed_length": args.fixed_length,
                         "micro_batch_size": args.micro_batch_size, "rollout_threads": args.rollout_threads,
                         "trainer_threads": args.trainer_threads, "max_batch_sequences": args.max_batch_sequences,
                         "backend": args.backend, "model": args.model},
            "runs": {name: asdict(figures) for name, figures in results.items()}}


def main(argv: list[str] | None = None) -> None:
    from engine.default_model import resolve_model_path

    args = parse_args(sys.argv[1:] if argv is None else argv)
    model_dir = resolve_model_path(args.model, args.cache_dir, log=lambda line: print(line, file=sys.stderr))
    load_before = os.getloadavg()[0]
    parallelism = host_parallelism()
    with tempfile.TemporaryDirectory(prefix="cadence-bench-pipeline-") as tmp:
        out_dir = Path(tmp)
        results = run_variants(args, model_dir, out_dir)
        param_diff = max_rel_diff(final_weights(out_dir / "periodic_async", args.iterations),
                                  final_weights(out_dir / "split_sync", args.iterations))
        bound = schedule_bound([out_dir / run_name("split_sync", r) for r in range(args.repeats)],
                               args.micro_batch_size)
    result = report(args, results, param_diff, bound, (load_before, os.getloadavg()[0]), parallelism)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        if key not in ("settings", "runs"):
            print(f"{key:>26}: {value:.4g}")
    for name, figures in result["runs"].items():
        print(f"{name:>26}: " + ", ".join(f"{k}={v:.3g}" for k, v in figures.items()))
