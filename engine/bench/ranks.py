"""Samples/s of the same recipe on 1 and on N trainer ranks (torchrun, FSDP2), measured in one run.

    python -m engine.bench ranks [--json] [--ranks 1 2] [--iterations 8] [--recipe recipes/quickstart.yaml]
                                 [key=value ...]

Each rank count launches `python -m torch.distributed.run --nproc-per-node N -m engine.train RECIPE` with
evaluation off and one intra-op thread per rank (backend.threads=1), one after the other. Figures over
iterations 2..N (the first pays for warm-up):
    samples_per_s[N]   completions per second of wall clock (sum of samples / sum of iteration times)
    speedup[N]         samples_per_s[N] / samples_per_s[first rank count]
    train_s[N]         mean trainer time per iteration (stage train + step): what more ranks divide
    rollout_s[N]       mean generation time per iteration: rank 0 generates alone, so more trainer ranks
                       cannot shorten it (placement and rollout engine do)
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from engine import metrics as M


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.bench ranks", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (and nothing else) on stdout")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=8, help="per run; the first is not measured")
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    return parser.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(args: argparse.Namespace, nproc: int, out: Path) -> list[dict]:
    overrides = [f"run.output_dir={out}", f"run.name=ranks{nproc}", f"run.iterations={args.iterations}",
                 "run.progress=false", "run.checkpoint_every=0", "run.overwrite=true", "eval.before=false",
                 "eval.after=false", "backend.threads=1", *args.overrides]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={_free_port()}",
           "-m", "engine.train", args.recipe, *overrides]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{nproc} ranks failed:\n{done.stderr[-3000:]}")
    lines = (out / f"ranks{nproc}" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines][1:]


def figures(lines: list[dict]) -> dict[str, float]:
    samples = sum(line[M.SAMPLES_PER_S] * line[M.ITERATION_TIME] for line in lines)
    elapsed = sum(line[M.ITERATION_TIME] for line in lines)
    mean = lambda key: sum(line.get(key, 0.0) for line in lines) / len(lines)  # noqa: E731
    return {"samples_per_s": samples / elapsed, "train_s": mean("time/train") + mean("time/step"),
            "rollout_s": mean("time/rollout")}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: figures(run_ranks(args, n, Path(tmp))) for n in args.ranks}
    base = runs[args.ranks[0]]["samples_per_s"]
    result = {"recipe": args.recipe, "iterations": args.iterations, "load_avg_1m": os.getloadavg()[0],
              **{f"{key}[{n}]": value for n, r in runs.items() for key, value in r.items()},
              **{f"speedup[{n}]": r["samples_per_s"] / base for n, r in runs.items()}}
    print(json.dumps(result) if args.json else "\n".join(f"{k:24s} {v}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
