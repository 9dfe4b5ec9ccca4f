"""PNG plots of a run: the reward curve and a Gantt-style stage timeline.

matplotlib is imported inside each function (rule 15: `import engine` works without it), and figures are
drawn on a bare `matplotlib.figure.Figure` with the Agg canvas rather than through pyplot: pyplot keeps
global state and would switch the backend of whoever imported us (a notebook, a GUI session).
Each PNG is written to a temporary name and renamed, so a reader never sees half a file.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from engine import metrics as M

_CURVE_KEYS = (M.REWARD_MEAN, M.ACCURACY, M.EVAL_ACCURACY)
_POINT_KEYS = (M.EVAL_ACCURACY,)  # measured now and then (eval.every): drawn as points, not a line


def plot_reward_curve(records: Sequence[dict[str, Any]], path: str | Path,
                      keys: Sequence[str] = _CURVE_KEYS, title: str = "") -> Path:
    """Draw one line per metric in `keys` against `iteration`, from `metrics.jsonl` records.

    Records without a key (or with a null value) leave a gap for that line only. Keys of `_POINT_KEYS`
    (eval/accuracy) are drawn as points: they exist on a few iterations only, 0 included (before training).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    for key in keys:
        xs, ys = _series(records, key)
        if xs and key in _POINT_KEYS:
            ax.plot(xs, ys, linestyle="none", marker="o", label=key)
        elif xs:
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=key)
    ax.set_xlabel("iteration")
    ax.set_ylabel("value")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(loc="best")
    ax.set_title(title or "reward")
    return _save(fig, Path(path))


def plot_timeline(spans: Iterable[tuple[str, str, float, float]], path: str | Path, title: str = "") -> Path:
    """Gantt chart: one row per lane (in order of first appearance), one bar per (lane, stage, start_s, end_s)
    span, one colour per stage (legend), time in seconds on the x axis."""
    from matplotlib.figure import Figure

    spans = list(spans)
    lanes = list(dict.fromkeys(span[0] for span in spans))
    colours = _stage_colours(span[1] for span in spans)
    fig = Figure(figsize=(10, 1.2 + 0.5 * max(1, len(lanes))), dpi=100)
    ax = fig.add_subplot()
    for lane, stage, start, end in spans:
        ax.barh(lanes.index(lane), end - start, left=start, height=0.6, color=colours[stage],
                edgecolor="black", linewidth=0.3)
    ax.set_yticks(range(len(lanes)), labels=lanes)
    ax.invert_yaxis()  # first lane on top, like reading order
    ax.set_xlabel("seconds")
    ax.grid(True, axis="x", alpha=0.3)
    _stage_legend(ax, colours)
    ax.set_title(title or "timeline")
    fig.tight_layout()
    return _save(fig, Path(path))


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for record in records:
        value = record.get(key)
        if value is None or M.ITERATION not in record or not math.isfinite(value):
            continue
        xs.append(record[M.ITERATION])
        ys.append(value)
    return xs, ys


def _stage_colours(stages: Iterable[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors  # 10 distinct colours; more stages than that cycle
    return {stage: palette[i % len(palette)] for i, stage in enumerate(dict.fromkeys(stages))}


def _stage_legend(ax: Any, colours: dict[str, Any]) -> None:
    from matplotlib.patches import Patch

    if colours:
        handles = [Patch(facecolor=colour, edgecolor="black", label=stage) for stage, colour in colours.items()]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png", bbox_inches="tight")
    os.replace(tmp, path)
    return path
