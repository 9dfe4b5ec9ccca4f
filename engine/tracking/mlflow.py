"""MLflow: one mlflow run per Cadence run in experiment `run.project`; the resolved config as params.

The default store is `sqlite:///runs/<name>/mlflow.db` (view it with `mlflow ui --backend-store-uri
sqlite:///runs/<name>/mlflow.db`): MLflow 3 refuses its old `file:` store unless MLFLOW_ALLOW_FILE_STORE=true.
`run.mlflow_tracking_uri` points elsewhere (a server, a shared database). A resumed Cadence run continues the
same mlflow run (its id is kept in runs/<name>/mlflow_run_id); the iterations replayed after the resume are
logged again, so their history holds both values.
"""
from __future__ import annotations

import time
from typing import Any

from engine.tracking import TrackerContext, flatten

RUN_ID_FILE = "mlflow_run_id"
_BATCH = 100  # MLflow's limit of params per log_batch call (metrics: 1000)


def tracking_uri(ctx: TrackerContext) -> str:
    return ctx.mlflow_tracking_uri or f"sqlite:///{(ctx.run_dir / 'mlflow.db').resolve()}"


class MlflowTracker:
    def __init__(self, ctx: TrackerContext) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri(ctx))
        experiment = self.client.get_experiment_by_name(ctx.project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            ctx.project, artifact_location=(ctx.run_dir / "mlartifacts").resolve().as_uri())
        id_file = ctx.run_dir / RUN_ID_FILE
        if ctx.start_iteration > 0 and id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        self.run_id = self.client.create_run(experiment_id, run_name=ctx.run_name).info.run_id
        id_file.write_text(self.run_id + "\n")
        params = [Param(k, str(v)[:6000]) for k, v in flatten(ctx.config).items()]  # 6000: MLflow's value limit
        for start in range(0, len(params), _BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + _BATCH])

    def log_metrics(self, iteration: int, metrics: dict[str, float]) -> None:
        self._log(iteration, metrics)

    def log_summary(self, summary: dict[str, Any]) -> None:
        """Numbers as `summary/<key>` metrics, the rest as `summary.<key>` tags."""
        numbers = {f"summary/{k}": v for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._log(int(summary.get("iterations", 0)), numbers)
        for key, value in summary.items():
            if f"summary/{key}" not in numbers:
                self.client.set_tag(self.run_id, f"summary.{key}", str(value))

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if finished else "FAILED")

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start:start + 1000])


def open_tracker(ctx: TrackerContext) -> MlflowTracker:
    return MlflowTracker(ctx)
