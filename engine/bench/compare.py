"""Side-by-side comparison of end-to-end bench reports (engine/bench/e2e.py), e.g. one per machine.

    cadence bench compare A.json B.json [C.json ...] --out DIR   (also: python -m engine.bench compare ...)

Writes DIR/comparison.md, a Markdown table with one column per report and, from the second column on, the
ratio of each figure to the first report's (for times, below 1 is faster), and DIR/comparison.png, bars side by
side of the throughput figures and the stage times. When the reports' recipes (their resolved configs, machine
settings aside), model sizes or batch shapes differ, it prints a warning per difference, also written at the
top of the .md: the ratios then compare different workloads, not machines.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.bench.e2e import SCHEMA_VERSION
from engine.tracking import flatten

# Config keys that describe the machine or the bench's bookkeeping, not the workload.
MACHINE_KEYS = ("backend.", "run.output_dir", "run.name", "run.cache_dir", "run.progress", "pipeline.rollout_threads",
                "pipeline.trainer_threads", "pipeline.sync_timeout_s")
MODEL_KEYS = ("parameters", "layers", "hidden_size", "vocab_size", "compute_dtype")
BATCH_KEYS = ("prompts_per_iteration", "group_size", "max_new_tokens", "prompt_len_mean", "prompt_len_max")
RESPONSE_TOLERANCE = 0.10  # relative: sampling round-off moves mean response lengths a little between machines

# (row label, path in the report, format). Throughput and FLOPs first, then stage and pipeline seconds.
ROWS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("samples/s", ("throughput", "samples_per_s"), ".4g"),
    ("tokens/s end to end", ("throughput", "end_to_end_tokens_per_s"), ".4g"),
    ("tokens/s generation", ("throughput", "generation_tokens_per_s"), ".4g"),
    ("tokens/s training", ("throughput", "training_tokens_per_s"), ".4g"),
    ("iteration s (mean)", ("throughput", "iteration_s_mean"), ".4g"),
    ("MFU", ("flops", "mfu"), ".3f"),
    ("MFU generation", ("flops", "generation_mfu"), ".3f"),
    ("MFU training", ("flops", "training_mfu"), ".3f"),
    ("achieved TFLOP/s", ("flops", "achieved_flops_per_s"), "tera"),
    ("peak TFLOP/s per device", ("flops", "peak_flops_per_device"), "tera"),
    ("generation busy s", ("pipeline", "gen_busy_s"), ".4g"),
    ("training busy s", ("pipeline", "train_busy_s"), ".4g"),
    ("overlap fraction", ("pipeline", "overlap_frac"), ".3f"),
    ("ideal speedup", ("pipeline", "ideal_speedup"), ".3f"),
    ("weight sync s", ("pipeline", "sync_s"), ".4g"),
    ("peak memory GiB", ("memory", "peak_bytes"), "gib"),
)
INFO_ROWS: tuple[tuple[str, Callable[[dict], Any]], ...] = (
    ("backend", lambda r: r["device"]["backend"]),
    ("device", lambda r: r["device"]["name"]),
    ("devices used / visible", lambda r: f"{r['device']['count_used']} / {r['device']['count_visible']}"),
    ("runtime", lambda r: ", ".join(f"{k} {v}" for k, v in r["software"]["runtime"].items()) or "-"),
    ("torch / transformers", lambda r: f"{r['software']['torch']} / {r['software']['transformers']}"),
    ("commit", lambda r: r["software"]["cadence_commit"] or "-"),
    ("recipe", lambda r: r["recipe"]["path"]),
    ("model", lambda r: f"{r['model']['parameters'] / 1e6:.1f}M params, {r['model']['compute_dtype']}"),
    ("B x G, prompt / response mean", lambda r: f"{r['batch']['prompts_per_iteration']} x {r['batch']['group_size']}, "
                                                f"{r['batch']['prompt_len_mean']:.0f} / "
                                                f"{_fmt(r['batch']['response_len_mean'], '.0f')}"),
    ("schedule, placement", lambda r: f"{r['pipeline']['schedule']}, {r['pipeline']['placement']}"),
    ("measured iterations", lambda r: r["measurement"]["measured_iterations"]),
)
STAGE_ORDER = ("prompts", "sync_weights", "rollout", "score", "train", "step", "checkpoint")  # as the controller runs them
THROUGHPUT_BARS = (("generation", "generation_tokens_per_s"), ("training", "training_tokens_per_s"),
                   ("end to end", "end_to_end_tokens_per_s"))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cadence bench compare", description=__doc__.split("\n")[0])
    parser.add_argument("reports", nargs="+", help="JSON reports of `cadence bench e2e`; ratios are against the first")
    parser.add_argument("--out", required=True, help="folder for comparison.md and comparison.png")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        reports = [load_report(path) for path in args.reports]
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    labels = column_labels(args.reports)
    warnings = workload_warnings(reports, labels)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(markdown(reports, labels, warnings), encoding="utf-8")
    plot(reports, labels, out / "comparison.png")
    print(f"{len(reports)} reports -> {out / 'comparison.md'}, {out / 'comparison.png'}")
    return 0


def load_report(path: str) -> dict:
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(report, dict) or report.get("schema_version") != SCHEMA_VERSION:
        found = report.get("schema_version") if isinstance(report, dict) else None
        raise ValueError(f"{path}: not an e2e report of schema_version {SCHEMA_VERSION} (found {found!r})")
    return report


def column_labels(paths: list[str]) -> list[str]:
    """File names without .json; the whole path where two names collide."""
    stems = [Path(p).stem for p in paths]
    return [stem if stems.count(stem) == 1 else p for stem, p in zip(stems, paths)]


# ------------------------------------------------------------------------------------------ warnings


def workload_warnings(reports: list[dict], labels: list[str]) -> list[str]:
    """One line per way a report's workload differs from the first report's."""
    first, out = reports[0], []
    for report, label in zip(reports[1:], labels[1:]):
        vs = f"{label} vs {labels[0]}"
        if report["recipe"]["path"] != first["recipe"]["path"]:
            out.append(f"recipes differ ({vs}): {report['recipe']['path']} / {first['recipe']['path']}")
        config = config_differences(first["recipe"]["config"], report["recipe"]["config"])
        if config:
            out.append(f"configs differ ({vs}): " + "; ".join(config))
        out += [f"model sizes differ ({vs}): {k} {report['model'][k]} / {first['model'][k]}"
                for k in MODEL_KEYS if report["model"].get(k) != first["model"].get(k)]
        out += [f"batch shapes differ ({vs}): {k} {_fmt(report['batch'][k])} / {_fmt(first['batch'][k])}"
                for k in BATCH_KEYS if report["batch"].get(k) != first["batch"].get(k)]
        a, b = report["batch"]["response_len_mean"], first["batch"]["response_len_mean"]
        if a is not None and b and abs(a / b - 1) > RESPONSE_TOLERANCE:
            out.append(f"batch shapes differ ({vs}): response_len_mean {a:.1f} / {b:.1f} (more than "
                       f"{RESPONSE_TOLERANCE:.0%} apart: per-sample figures compare different work)")
    return out


def config_differences(a: dict, b: dict) -> list[str]:
    flat_a, flat_b = flatten(a), flatten(b)
    keys = sorted(set(flat_a) | set(flat_b))
    return [f"{k} {flat_b.get(k)!r} / {flat_a.get(k)!r}" for k in keys
            if flat_a.get(k) != flat_b.get(k) and not k.startswith(MACHINE_KEYS)]


# ------------------------------------------------------------------------------------------ the table


def value_at(report: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        report = report.get(key) if isinstance(report, dict) else None
    return report


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "n/a"
    if spec == "tera":
        return f"{value / 1e12:.4g}"
    if spec == "gib":
        return f"{value / 2**30:.3g}"
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def markdown(reports: list[dict], labels: list[str], warnings: list[str]) -> str:
    lines = ["# End-to-end comparison", "",
             f"Ratios (x) are each figure over the first report's ({labels[0]}); for seconds, below 1 is faster.", ""]
    if warnings:
        lines += ["**Warnings: the workloads differ, so the ratios do not compare machines alone.**", ""]
        lines += [f"* {w}" for w in warnings] + [""]
    lines += ["| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name, get in INFO_ROWS:
        lines.append(f"| {name} | " + " | ".join(str(get(r)) for r in reports) + " |")
    for name, path, spec in ROWS:
        lines.append(f"| {name} | " + " | ".join(_cell(r, reports[0], path, spec, i) for i, r in
                                                   enumerate(reports)) + " |")
    for stage in stage_names(reports):
        lines.append(f"| time/{stage} s | " + " | ".join(_cell(r, reports[0], ("stages_s", stage), ".4g", i)
                                                         for i, r in enumerate(reports)) + " |")
    return "\n".join(lines) + "\n"


def stage_names(reports: list[dict]) -> list[str]:
    """Every stage of any report, in the controller's order, unknown ones after it."""
    names = {s for r in reports for s in r["stages_s"]}
    return [s for s in STAGE_ORDER if s in names] + sorted(names - set(STAGE_ORDER))


def _cell(report: dict, first: dict, path: tuple[str, ...], spec: str, column: int) -> str:
    value, base = value_at(report, path), value_at(first, path)
    text = _fmt(value, spec)
    if column > 0 and value is not None and base:
        text += f" ({value / base:.2f}x)"
    return text


# ------------------------------------------------------------------------------------------ the chart


def plot(reports: list[dict], labels: list[str], path: Path) -> Path:
    """Three panels of bars, one bar per report: tokens/s (generation, training, end to end), samples/s, and
    seconds per iteration of each stage. matplotlib on a bare Figure with the Agg canvas, as engine/plots.py."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.8), dpi=100)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [3, 1.2, 5]})
    groups = [name for name, _ in THROUGHPUT_BARS]
    _bars(axes[0], groups, [[r["throughput"][k] or 0.0 for _, k in THROUGHPUT_BARS] for r in reports], labels)
    axes[0].set_title("tokens/s")
    _bars(axes[1], ["samples/s"], [[r["throughput"]["samples_per_s"]] for r in reports], labels)
    axes[1].set_title("samples/s")
    stages = stage_names(reports)
    _bars(axes[2], stages + ["iteration"],
          [[r["stages_s"].get(s, 0.0) for s in stages] + [r["throughput"]["iteration_s_mean"]] for r in reports],
          labels)
    axes[2].set_title("seconds per iteration")
    axes[2].legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def _bars(ax: Any, groups: list[str], values: list[list[float]], labels: list[str]) -> None:
    """Grouped bars: one group per entry of `groups`, one bar per report (values[report][group])."""
    width = 0.8 / len(values)
    for i, (row, label) in enumerate(zip(values, labels)):
        xs = [g + (i - (len(values) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, row, width=width, label=label)
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in row], fontsize="x-small", rotation=90, padding=2)
    ax.set_xticks(range(len(groups)), labels=groups, rotation=30, ha="right")
    ax.margins(y=0.2)
    ax.grid(True, axis="y", alpha=0.3)
