"""`cadence bench e2e` on recipes/bench_e2e_cpu.yaml twice (colocated sync in a subprocess; split
periodic_async in this process), then `cadence bench compare` on the two reports: every field that
docs/benchmarks.md documents is in the report and nothing else, the types and values are sane, the Markdown
table and the PNG are written, and compare warns when recipes, model sizes or batch shapes differ."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import cli
from engine.bench import e2e
from engine.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
RECIPE = "recipes/bench_e2e_cpu.yaml"
RUN = ["--warmup", "1", "--iterations", "2"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    cache = f"run.cache_dir={tmp / 'cache'}"
    sync, periodic = tmp / "sync.json", tmp / "async.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "engine.cli", "bench", "e2e", RECIPE, "--out", str(sync), *RUN, cache,
                    "backend.threads=1"], cwd=ROOT, env=env, check=True, timeout=300)
    assert cli.main(["bench", "e2e", str(ROOT / RECIPE), "--out", str(periodic), *RUN, cache,
                     "pipeline.placement=split", "pipeline.schedule=periodic_async"]) == 0
    return tmp, sync, periodic


def documented_fields() -> set[str]:
    """The `section.field` names of the report table in docs/benchmarks.md (its end-to-end section)."""
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    section = text[text.index("### Report fields"):]
    section = section[:section.index("\n### ", 1)]
    return set(re.findall(r"^\| `([a-z0-9_]+(?:\.[a-z0-9_<>]+)?)`", section, flags=re.MULTILINE))


def report_fields(report: dict) -> set[str]:
    fields = set()
    for key, value in report.items():
        if key == "stages_s":
            fields.add("stages_s.<stage>")
        elif isinstance(value, dict):
            fields |= {f"{key}.{sub}" for sub in value}
        else:
            fields.add(key)
    return fields


@pytest.mark.slow
def test_reports_hold_exactly_the_documented_fields(reports):
    _, sync, periodic = reports
    documented = documented_fields()
    for path in (sync, periodic):
        fields = report_fields(json.loads(path.read_text()))
        assert fields - documented == set(), "fields missing from docs/benchmarks.md"
        assert documented - fields == {"run_dir"}, "documented fields missing from the report"  # only with --run-dir


@pytest.mark.slow
def test_report_values_are_sane(reports):
    _, sync_path, periodic_path = reports
    sync, periodic = json.loads(sync_path.read_text()), json.loads(periodic_path.read_text())
    for r in (sync, periodic):
        assert r["schema_version"] == e2e.SCHEMA_VERSION
        assert r["measurement"]["warmup_iterations"] == 1 and r["measurement"]["measured_iterations"] == 2
        assert r["device"]["backend"] == "cpu" and r["device"]["count_used"] == 1
        assert r["software"]["torch"] == torch.__version__ and r["software"]["runtime"] == {}
        assert r["model"]["parameters"] == r["model"]["matmul_parameters"] == 164_416  # tied: nothing to drop
        assert r["model"]["tied_embeddings"] and r["model"]["layers"] == 2 and r["model"]["hidden_size"] == 64
        b = r["batch"]
        assert (b["prompts_per_iteration"], b["group_size"], b["samples_per_iteration"]) == (4, 4, 16)
        assert 20 < b["prompt_len_mean"] <= b["prompt_len_max"] < 60
        assert 1 <= b["response_len_mean"] <= b["max_new_tokens"] == 48
        t = r["throughput"]
        for key in ("samples_per_s", "end_to_end_tokens_per_s", "generation_tokens_per_s", "training_tokens_per_s"):
            assert isinstance(t[key], float) and t[key] > 0, key
        assert t["end_to_end_tokens_per_s"] == pytest.approx(t["samples_per_s"] * b["response_len_mean"])
        assert {"prompts", "sync_weights", "rollout", "score", "train", "step"} <= set(r["stages_s"])
        assert r["pipeline"]["ideal_speedup"] >= 1.0 and 0.0 <= r["pipeline"]["overlap_frac"] <= 1.0
        assert 0.0 <= r["pipeline"]["median_arrival_frac"] <= 1.0
        assert r["rollout_bound"] == {"max_batch_sequences": 8, "sequences_per_iteration": 16, "bounded": True,
                                      "groups_in_flight": 2, "waves": 2}
        assert r["memory"]["peak_bytes"] > 0
        f = r["flops"]
        assert f["mfu"] is None and f["peak_flops_per_device"] is None  # no CPU peak
        assert f["training_flops"] == 6 * 164_416 * t["trained_tokens_per_iteration"] * 2
        assert r["recipe"]["path"].endswith(RECIPE) and r["recipe"]["config"]["run"]["iterations"] == 3
    assert sync["pipeline"]["schedule"] == "sync" and sync["pipeline"]["placement"] == "colocated"
    assert periodic["pipeline"]["schedule"] == "periodic_async" and periodic["pipeline"]["placement"] == "split"
    assert sync["batch"]["prompt_len_mean"] == periodic["batch"]["prompt_len_mean"]  # same prompt stream


@pytest.mark.slow
def test_compare_writes_table_and_chart_and_warns_on_other_workloads(reports, capsys):
    tmp, sync, periodic = reports
    out = tmp / "cmp"
    assert cli.main(["compare", str(sync), str(periodic), "--out", str(out)]) == 0
    table = (out / "comparison.md").read_text()
    assert "| | sync | async |" in table and "| samples/s |" in table and "x)" in table
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "configs differ" in table and "pipeline.schedule" in table  # the two runs differ in their schedule
    assert "warning: configs differ" in capsys.readouterr().err

    other = json.loads(sync.read_text())
    other["batch"]["prompts_per_iteration"] = 8
    other["model"]["parameters"] = 494_032_768
    (tmp / "other.json").write_text(json.dumps(other))
    assert cli.main(["compare", str(sync), str(tmp / "other.json"), "--out", str(tmp / "cmp2")]) == 0
    table = (tmp / "cmp2" / "comparison.md").read_text()
    assert "batch shapes differ (other vs sync): prompts_per_iteration 8 / 4" in table
    assert "model sizes differ (other vs sync): parameters" in table

    assert cli.main(["compare", str(sync), str(sync), "--out", str(tmp / "cmp3")]) == 0  # same workload
    assert "Warnings" not in (tmp / "cmp3" / "comparison.md").read_text()


def test_bench_owned_keys_are_refused_as_overrides(tmp_path, capsys):
    assert cli.main(["bench", "e2e", str(ROOT / RECIPE), "--out", str(tmp_path / "r.json"), "run.iterations=9"]) == 2
    assert "run.iterations: set by the bench" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_compare_refuses_what_is_not_a_report(tmp_path, capsys):
    (tmp_path / "x.json").write_text(json.dumps({"schema_version": 99}))
    assert cli.main(["compare", str(tmp_path / "x.json"), "--out", str(tmp_path / "out")]) == 2
    assert "schema_version" in capsys.readouterr().err


class _Peak:
    """A backend whose device peaks at 1 TFLOP/s."""

    def peak_flops(self, dtype: torch.dtype) -> float:
        return 1e12


def test_mfu_follows_the_stated_formula():
    cfg = e2e.Config(model=ModelConfig(path="x"))  # kl_coef 0: no reference forward
    model = {"matmul_parameters": 1_000_000, "compute_dtype": "bfloat16"}
    totals = {"trained_tokens": 3000, "prompt_tokens": 1000, "generated_tokens": 2000, "wall_s": 2.0,
              "gen_busy_s": 1.0, "train_busy_s": 0.5}
    devices = {"count_used": 2, "rollout_devices": 1, "trainer_devices": 1}
    f = e2e.flops_figures(cfg, _Peak(), model, totals, devices)
    assert f["training_flops"] == 6 * 1e6 * 3000 and f["generation_flops"] == 2 * 1e6 * 3000
    assert f["mfu"] == pytest.approx((18e9 + 6e9) / (2.0 * 1e12 * 2))
    assert f["generation_mfu"] == pytest.approx(6e9 / 1e12) and f["training_mfu"] == pytest.approx(18e9 / 0.5e12)
