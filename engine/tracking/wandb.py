"""Weights & Biases: one wandb run per Cadence run, files under runs/<name>/wandb.

WANDB_MODE=offline writes a local offline run (`wandb sync runs/<name>/wandb/offline-run-*` uploads it later);
online needs `wandb login` (or WANDB_API_KEY) first. A resumed Cadence run continues the same wandb run (its id
is kept in runs/<name>/wandb_run_id); iterations replayed after the resume are at steps wandb already holds,
so wandb keeps its first values for them.
"""
from __future__ import annotations

import secrets
from typing import Any

from engine.tracking import TrackerContext

RUN_ID_FILE = "wandb_run_id"


class WandbTracker:
    def __init__(self, ctx: TrackerContext) -> None:
        import wandb

        id_file = ctx.run_dir / RUN_ID_FILE
        resume = ctx.start_iteration > 0 and id_file.is_file()
        run_id = id_file.read_text().strip() if resume else secrets.token_hex(4)  # 8 lowercase hex digits
        # console="off": wandb leaves stdout/stderr alone (its capture would tear the progress bar)
        self.run = wandb.init(project=ctx.project, name=ctx.run_name, dir=str(ctx.run_dir), id=run_id,
                              config=ctx.config, resume="allow" if resume else None,
                              settings=wandb.Settings(console="off"))
        id_file.write_text(run_id + "\n")

    def log_metrics(self, iteration: int, metrics: dict[str, float]) -> None:
        self.run.log({k: v for k, v in metrics.items() if v is not None}, step=iteration)

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.run.summary.update({f"summary/{k}": v for k, v in summary.items()})

    def close(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)


def open_tracker(ctx: TrackerContext) -> WandbTracker:
    return WandbTracker(ctx)
