"""TensorBoard: scalars under runs/<name>/tensorboard, the config and the summary as text panels."""
from __future__ import annotations

import json
from typing import Any

from engine.tracking import TrackerContext

TENSORBOARD_DIR = "tensorboard"


class TensorBoardTracker:
    def __init__(self, ctx: TrackerContext) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run wrote past the checkpoint, the same rule as metrics.jsonl.
        start = ctx.start_iteration
        self.writer = SummaryWriter(log_dir=str(ctx.run_dir / TENSORBOARD_DIR),
                                    purge_step=start + 1 if start > 0 else None)
        if ctx.config:
            self.writer.add_text("config", _code_block(json.dumps(ctx.config, indent=2, default=str)), start)

    def log_metrics(self, iteration: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if value is not None:
                self.writer.add_scalar(key, value, global_step=iteration)

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.writer.add_text("summary", _code_block(json.dumps(summary, indent=2, default=str)))

    def close(self, finished: bool) -> None:
        self.writer.close()


def _code_block(text: str) -> str:
    """TensorBoard renders text as markdown: indenting keeps the JSON's layout."""
    return "\n".join("    " + line for line in text.splitlines())


def open_tracker(ctx: TrackerContext) -> TensorBoardTracker:
    return TensorBoardTracker(ctx)
