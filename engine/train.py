"""Launch a GRPO run: `python -m engine.train RECIPE [key=value ...]` (also under torchrun, and `cadence train`)."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from engine.config import Config, ConfigError, load_config, save_config


def parse_args(argv: list[str]) -> tuple[str | None, list[str]]:
    parser = argparse.ArgumentParser(prog="engine.train", description=__doc__)
    parser.add_argument("recipe", nargs="?", help="a YAML recipe, e.g. recipes/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-5")
    args = parser.parse_args(argv)
    if args.recipe and "=" in args.recipe:  # only overrides were given
        return None, [args.recipe, *args.overrides]
    return args.recipe, args.overrides


def check_run_dir(cfg: Config) -> Path:
    """runs/<name>/: reused on resume; an existing run is never clobbered unless run.overwrite=true."""
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    if run_dir.exists() and not cfg.run.resume and not cfg.run.overwrite:
        raise ConfigError(f"run.name: {run_dir} already exists; set run.resume=true to continue it, "
                          "run.overwrite=true to replace it, or choose another run.name")
    return run_dir


def create_run_dir(cfg: Config, run_dir: Path) -> None:
    """Called once every component was built, so bad input leaves no run folder behind."""
    if run_dir.exists() and not cfg.run.resume:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")


def check_world_size() -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != 1:
        raise ConfigError(f"WORLD_SIZE={world}: this version runs one trainer process "
                          "(torchrun --nproc-per-node 1); multi-process data parallelism is not implemented yet")


def run(cfg: Config) -> dict:
    from engine.build import build_components
    from engine.controller import Controller

    check_world_size()
    run_dir = check_run_dir(cfg)
    parts = build_components(cfg, run_dir)
    create_run_dir(cfg, run_dir)
    return Controller(parts).run()


def main(argv: list[str] | None = None) -> int:
    recipe, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(recipe, overrides)
        summary = run(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("summary: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
