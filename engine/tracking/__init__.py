"""Experiment trackers: where a run's metrics go besides `metrics.jsonl` (`run.loggers`).

    tensorboard  runs/<name>/tensorboard/          events; config and summary as text
    wandb        runs/<name>/wandb/                 a Weights & Biases run (WANDB_MODE=offline: a local offline run)
    mlflow       run.mlflow_tracking_uri            default sqlite:///runs/<name>/mlflow.db; config as params

Each lives in its own module behind the `Tracker` protocol and imports its package only when opened, so
`import engine` needs none of them. `run.loggers` unset means "tensorboard when it is installed"; a logger
named in the list that is not installed is a ConfigError naming the package to install. Only the process that
owns the run folder (rank 0) opens trackers.
"""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.config import ConfigError, RunConfig
from engine.console import log

# logger -> (modules it imports, what to pip install)
REQUIREMENTS = {
    "tensorboard": (("tensorboard",), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "mlflow-skinny sqlalchemy alembic"),
}
_told_no_tensorboard = False  # the "TensorBoard is absent" note is logged once per process


class Tracker(Protocol):
    """One experiment tracker of a run. Opened with the resolved config already recorded."""

    def log_metrics(self, iteration: int, metrics: dict[str, float]) -> None:
        """One metrics.jsonl record (None values, i.e. non-finite ones, are left out)."""

    def log_summary(self, summary: dict[str, Any]) -> None:
        """The run's summary.json content, once at the end."""

    def close(self, finished: bool) -> None:
        """Flush and close; `finished` False: the run failed or was interrupted."""


@dataclass(frozen=True, slots=True)
class TrackerContext:
    """What a tracker is opened with."""

    run_dir: Path
    run_name: str
    start_iteration: int = 0  # > 0: a resumed run (its tracker continues the run it left where it can)
    config: dict[str, Any] = field(default_factory=dict)  # the resolved recipe, nested sections
    project: str = "cadence"
    mlflow_tracking_uri: str = ""


def missing_packages(name: str, mlflow_tracking_uri: str = "") -> str | None:
    """The pip install line logger `name` still needs, or None when it can open."""
    modules, install = REQUIREMENTS[name]
    if name == "mlflow" and mlflow_tracking_uri and not mlflow_tracking_uri.startswith("sqlite:"):
        modules, install = ("mlflow",), "mlflow-skinny"  # other stores need no database driver
    if all(importlib.util.find_spec(m) is not None for m in modules):
        return None
    return f"pip install {install} (or pip install -e '.[tracking]')"


def check_installed(run: RunConfig) -> None:
    """Raise ConfigError for a logger in run.loggers that cannot open here (before any run folder exists)."""
    for name in run.loggers or ():
        missing = missing_packages(name, run.mlflow_tracking_uri)
        if missing:
            raise ConfigError(f"run.loggers: {name} is not installed; {missing}, or remove it from run.loggers")


def open_trackers(loggers: Sequence[str] | None, ctx: TrackerContext) -> list[Tracker]:
    """The trackers `loggers` names (None: tensorboard when installed), each opened; on a failure the ones
    already open are closed again."""
    global _told_no_tensorboard
    if loggers is None:
        loggers = ["tensorboard"] if missing_packages("tensorboard") is None else []
        if not loggers and not _told_no_tensorboard:
            _told_no_tensorboard = True
            log.info("tensorboard is not installed: metrics go to metrics.jsonl only (pip install tensorboard)")
    opened: list[Tracker] = []
    try:
        for name in loggers:
            missing = missing_packages(name, ctx.mlflow_tracking_uri)
            if missing:
                raise ConfigError(f"run.loggers: {name} is not installed; {missing}")
            opened.append(importlib.import_module(f"engine.tracking.{name}").open_tracker(ctx))
    except BaseException:
        for tracker in opened:
            tracker.close(finished=False)
        raise
    return opened


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-5}} -> {"optim.lr": 1e-5}: the config as trackers without nesting want it."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
