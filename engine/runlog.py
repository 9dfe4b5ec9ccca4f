"""The run folder's logs: `runs/<name>/metrics.jsonl`, `samples.jsonl`, a progress bar and one console line
per iteration, the experiment trackers (TensorBoard, wandb, mlflow: engine/tracking/), `summary.json` and
`reward_curve.png`.

`metrics.jsonl` is the record of truth: one JSON object per iteration, `{"iteration": k, "<metric>": value,
...}`, flushed line by line so a killed run keeps everything it logged. Non-finite values (a diverged loss)
are written as `null`, because NaN/Infinity are not JSON and break strict readers such as `jq`. The held-out
accuracy before training is the line of iteration 0 (`{"iteration": 0, "eval/accuracy": ...}`).

`samples.jsonl` holds a few groups per iteration (run.log_samples): `{"iteration", "prompt", "reference",
"completions", "rewards", "advantages"}`, to read what the policy writes as it learns.

Resume: a run checkpointed at iteration k may have logged k+1, k+2... before it died. Those iterations run
again after the resume, so `RunLog(start_iteration=k)` drops lines with iteration > k from both files first
(and TensorBoard purges its events past k), and neither file ever holds an iteration twice.

Only the process that owns the run folder (rank 0) creates a RunLog.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine import console
from engine import metrics as M
from engine.tracking import Tracker, TrackerContext, open_trackers
from engine.types import RolloutGroup

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
REWARD_CURVE_FILE = "reward_curve.png"
# the metrics of the per-iteration console line, in its order, when the iteration has them
CONSOLE_KEYS = (M.REWARD_MEAN, M.ACCURACY, M.EVAL_ACCURACY, M.LOSS, M.KL, M.LR, M.RESPONSE_LEN, M.ITERATION_TIME)
log = console.log


class RunLog:
    """Writes one iteration's metrics to every sink: `metrics.jsonl`, the progress bar and console, the trackers.

    `start_iteration` is the iteration of the checkpoint being resumed (0 for a fresh run, which starts
    `metrics.jsonl` empty); logged iterations are expected to count from `start_iteration + 1`. `trackers`:
    the open experiment trackers; None opens the default (TensorBoard when it is installed).
    `samples_per_iteration`: groups `log_samples` writes per iteration (0 = no samples.jsonl).
    """

    def __init__(self, run_dir: str | Path, total_iterations: int, start_iteration: int = 0,
                 progress: bool = True, trackers: Sequence[Tracker] | None = None,
                 samples_per_iteration: int = 0) -> None:
        console.enable()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.total_iterations = total_iterations
        self.samples_per_iteration = samples_per_iteration
        self._path = self.run_dir / METRICS_FILE
        for name in (METRICS_FILE, SAMPLES_FILE):
            _truncate_jsonl(self.run_dir / name, keep_through=start_iteration)
        self._file = self._path.open("a", encoding="utf-8")
        self._samples = (self.run_dir / SAMPLES_FILE).open("a", encoding="utf-8") if samples_per_iteration else None
        self._bar = _make_bar(total_iterations, start_iteration, progress)
        if trackers is None:
            trackers = open_trackers(None, TrackerContext(self.run_dir, self.run_dir.name, start_iteration))
        self._trackers = list(trackers)
        self._summarised = False
        self._closed = False

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        """Append `{"iteration": iteration, **metrics}` as one line; update the bar, the console, the trackers."""
        record = {M.ITERATION: int(iteration), **{k: _scalar(v) for k, v in metrics.items() if k != M.ITERATION}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()  # a line per iteration is cheap; losing the tail of a killed run is not
        self._update_bar(record)
        log.info(console_line(record, self.total_iterations))
        values = {k: v for k, v in record.items() if k != M.ITERATION}
        for tracker in self._trackers:
            tracker.log_metrics(record[M.ITERATION], values)

    def log_samples(self, iteration: int, groups: Sequence[RolloutGroup]) -> None:
        """The first `samples_per_iteration` groups of the iteration, one line each (decoded completions, their
        rewards and advantages)."""
        if self._samples is None:
            return
        for group in groups[: self.samples_per_iteration]:
            self._samples.write(json.dumps(sample_record(iteration, group), allow_nan=False) + "\n")
        self._samples.flush()

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write `summary.json` atomically (readers see the old summary or the new one, never a part) and
        hand the summary to the trackers; a run that wrote its summary closes them as finished."""
        path = write_json_atomic(self.run_dir / SUMMARY_FILE, summary)
        for tracker in self._trackers:
            tracker.log_summary(summary)
        self._summarised = True
        return path

    def records(self) -> list[dict[str, Any]]:
        """Every record of this run so far (including those logged before a resume)."""
        if not self._closed:
            self._file.flush()
        return read_metrics(self.run_dir)

    def close(self) -> None:
        """Draw `reward_curve.png` from the whole `metrics.jsonl` and close every sink. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._file.close()
        if self._samples is not None:
            self._samples.close()
        if self._bar is not None:
            self._bar.close()
        for tracker in self._trackers:
            tracker.close(finished=self._summarised)
        records = read_metrics(self.run_dir)
        if records:
            _draw_curve(records, self.run_dir / REWARD_CURVE_FILE)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _update_bar(self, record: dict[str, Any]) -> None:
        if self._bar is None:
            return
        postfix = {short: f"{record[key]:.3f}" for short, key in (("reward", M.REWARD_MEAN), ("acc", M.ACCURACY))
                   if record.get(key) is not None}
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(max(0, record[M.ITERATION] - self._bar.n))


def console_line(record: dict[str, Any], total: int) -> str:
    """`iteration 3/10: reward/mean=0.412 reward/accuracy=0.333 ...` from the record's CONSOLE_KEYS."""
    parts = [f"{key}={record[key]:.4g}" for key in CONSOLE_KEYS if record.get(key) is not None]
    return f"iteration {record[M.ITERATION]}/{total}: " + " ".join(parts)


def sample_record(iteration: int, group: RolloutGroup) -> dict[str, Any]:
    """One samples.jsonl line: a group's prompt, reference, decoded completions, rewards and advantages."""
    def floats(tensor) -> list[float | None] | None:
        return None if tensor is None else [_scalar(float(v)) for v in tensor.tolist()]

    return {M.ITERATION: int(iteration), "prompt": group.prompt.text, "reference": group.prompt.reference,
            "completions": list(group.texts), "rewards": floats(group.rewards_G),
            "advantages": floats(group.advantages_G)}


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of `metrics.jsonl` in file order ([] when there is none). A torn last line (the run was
    killed mid-write) is skipped."""
    return read_jsonl(Path(run_dir) / METRICS_FILE)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run-folder JSON-lines file ([] when there is none), skipping a torn last line."""
    path = Path(path)
    if not path.exists():
        return []
    return _parse_lines(path.read_text(encoding="utf-8").splitlines(), path)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write `obj` as JSON to `path` via a temporary file, fsync and `os.replace`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------ helpers


def _truncate_jsonl(path: Path, keep_through: int) -> None:
    """Keep only lines with iteration <= keep_through (none for a fresh run), rewriting the file atomically."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if keep_through > 0 and r.get(M.ITERATION, 0) <= keep_through]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _parse_lines(lines: list[str], path: Path) -> list[dict[str, Any]]:
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n != len(lines):  # only the last line can be torn by a kill; anything else is damage
                _note(f"{path}:{n}: skipping a line that is not valid JSON")
    return records


def _scalar(value: Any) -> float | int | None:
    """A JSON-safe number: tensors and numpy scalars via `.item()`, non-finite values as None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric values must be numbers, got {type(value).__name__}: {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # tensors / numpy scalars in a summary
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _make_bar(total: int, start: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    # `initial` makes a resumed run's ETA use only the iterations done in this process.
    return tqdm(total=total, initial=start, unit="it", desc="train", dynamic_ncols=True)


def _draw_curve(records: list[dict[str, Any]], path: Path) -> None:
    try:
        from engine.plots import plot_reward_curve

        plot_reward_curve(records, path)
    except ImportError as exc:  # matplotlib is optional; a missing plot must not fail a finished run
        _note(f"cannot draw {path.name}: {exc}")


def _note(message: str) -> None:
    """A console note that does not break a live progress bar."""
    log.warning(message)
