"""Launch a GRPO run: `python -m engine.train RECIPE [key=value ...]` (also under torchrun, and `cadence train`)."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import traceback
from pathlib import Path

from engine.checkpoint import CheckpointError
from engine.config import Config, ConfigError, load_config, save_config
from engine.console import enable as enable_console


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


def run(cfg: Config) -> dict:
    """One process: the whole run. Under torchrun: every rank builds its FSDP2 trainer; rank 0 runs the
    controller and returns the summary, the other ranks follow its commands (engine/parallel/spmd.py)."""
    from engine.parallel.dist import launched_by_torchrun

    if launched_by_torchrun():
        return run_spmd(cfg)
    from engine.build import build_components
    from engine.controller import Controller

    run_dir = check_run_dir(cfg)
    parts = build_components(cfg, run_dir)
    create_run_dir(cfg, run_dir)
    return Controller(parts).run()


def run_spmd(cfg: Config) -> dict:
    """One rank of a torchrun launch. An exception on this rank is sent to every other rank before it is
    raised, and theirs end this one (engine/parallel/control.py): no rank waits for a failed peer."""
    from backends import get_backend
    from engine.build import build_follower, build_components
    from engine.controller import Controller
    from engine.parallel.control import ControlPlane
    from engine.parallel.dist import (barrier, broadcast_object, destroy_process_group, dist_env_from_environment,
                                      init_process_group)

    env = dist_env_from_environment()
    init_process_group(get_backend(cfg.backend.name), env, cfg.backend.collective_timeout_s)
    control = ControlPlane.connect(env.rank, env.world_size, cfg.backend.peer_timeout_s, broadcast_object)
    try:
        run_dir = check_run_dir(cfg) if env.is_root else Path(cfg.run.output_dir) / cfg.run.name
        if not env.is_root:
            build_follower(cfg, run_dir, env, control).run()
            summary = {}
        else:
            parts = build_components(cfg, run_dir, env, control)
            create_run_dir(cfg, run_dir)
            summary = Controller(parts).run()
    except BaseException as exc:
        control.fail(exc)  # the other ranks stop within seconds, naming this rank and error
        raise
    control.close()
    barrier()  # no rank tears the group down while another still uses it (gloo aborts on a closed peer)
    destroy_process_group()
    return summary


def main(argv: list[str] | None = None) -> int:
    from engine.parallel.dist import launched_by_torchrun

    recipe, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    enable_console()
    try:
        cfg = load_config(recipe, overrides)
        summary = run(cfg)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        if not launched_by_torchrun():
            raise
        traceback.print_exc()  # a rank exits through exit_process: no interpreter teardown with gloo threads
        return 1
    if not summary:  # a following rank: rank 0 reports
        return 0
    print("summary: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    return 0


def exit_process(code: int) -> None:
    """Exit with `code`. A torchrun rank skips the interpreter's teardown once its process group is gone:
    gloo's threads can abort it ("terminate called without an active exception" seen on CPU), turning a
    finished run into a failed launch."""
    from engine.parallel.dist import launched_by_torchrun

    if not launched_by_torchrun():
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_process(main())
