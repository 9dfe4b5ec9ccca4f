"""The run folder's logs: `runs/<name>/metrics.jsonl`, a progress bar, TensorBoard scalars, `summary.json`
and `reward_curve.png`.

`metrics.jsonl` is the record of truth: one JSON object per iteration, `{"iteration": k, "<metric>": value,
...}`, flushed line by line so a killed run keeps everything it logged. Non-finite values (a diverged loss)
are written as `null`, because NaN/Infinity are not JSON and break strict readers such as `jq`.

Resume: a run checkpointed at iteration k may have logged k+1, k+2... before it died. Those iterations run
again after the resume, so `RunLog(start_iteration=k)` drops lines with iteration > k first (and TensorBoard
purges its events past k), and the file never holds an iteration twice.

Only the process that owns the run folder (rank 0) creates a RunLog.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from engine import metrics as M

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
REWARD_CURVE_FILE = "reward_curve.png"
TENSORBOARD_DIR = "tensorboard"

_told_no_tensorboard = False  # the "TensorBoard is absent" note is printed once per process


class RunLog:
    """Writes one iteration's metrics to every sink: `metrics.jsonl`, the progress bar, TensorBoard.

    `start_iteration` is the iteration of the checkpoint being resumed (0 for a fresh run, which starts
    `metrics.jsonl` empty); logged iterations are expected to count from `start_iteration + 1`.
    """

    def __init__(self, run_dir: str | Path, total_iterations: int, start_iteration: int = 0,
                 progress: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._path = self.run_dir / METRICS_FILE
        _truncate_metrics(self._path, keep_through=start_iteration)
        self._file = self._path.open("a", encoding="utf-8")
        self._bar = _make_bar(total_iterations, start_iteration, progress)
        self._tb = _make_tensorboard(self.run_dir / TENSORBOARD_DIR, start_iteration)
        self._closed = False

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        """Append `{"iteration": iteration, **metrics}` as one line and update the bar and TensorBoard."""
        record = {M.ITERATION: int(iteration), **{k: _scalar(v) for k, v in metrics.items() if k != M.ITERATION}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()  # a line per iteration is cheap; losing the tail of a killed run is not
        self._update_bar(record)
        if self._tb is not None:
            for key, value in record.items():
                if key != M.ITERATION and value is not None:
                    self._tb.add_scalar(key, value, global_step=record[M.ITERATION])

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write `summary.json` atomically: readers see the old summary or the new one, never a part."""
        return write_json_atomic(self.run_dir / SUMMARY_FILE, summary)

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
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
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


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of `metrics.jsonl` in file order ([] when there is none). A torn last line (the run was
    killed mid-write) is skipped."""
    path = Path(run_dir) / METRICS_FILE
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


def _truncate_metrics(path: Path, keep_through: int) -> None:
    """Keep only lines with iteration <= keep_through (none for a fresh run), rewriting the file atomically."""
    if not path.exists():
        return
    kept = [r for r in read_metrics(path.parent) if keep_through > 0 and r.get(M.ITERATION, 0) <= keep_through]
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


def _make_tensorboard(log_dir: Path, start_iteration: int) -> Any:
    global _told_no_tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises ImportError when the tensorboard package is missing
        if not _told_no_tensorboard:
            _told_no_tensorboard = True
            _note("tensorboard is not installed: metrics go to metrics.jsonl only (pip install tensorboard)")
        return None
    # purge_step drops events a killed run wrote past the checkpoint, the same rule as metrics.jsonl.
    return SummaryWriter(log_dir=str(log_dir), purge_step=start_iteration + 1 if start_iteration > 0 else None)


def _draw_curve(records: list[dict[str, Any]], path: Path) -> None:
    try:
        from engine.plots import plot_reward_curve

        plot_reward_curve(records, path)
    except ImportError as exc:  # matplotlib is optional; a missing plot must not fail a finished run
        _note(f"cannot draw {path.name}: {exc}")


def _note(message: str) -> None:
    """Print a console note without breaking a live progress bar."""
    from tqdm import tqdm

    tqdm.write(f"[cadence] {message}", file=sys.stderr)
