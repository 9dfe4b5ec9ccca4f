"""`python -m engine.bench fleet`, tiny: the report holds its documented figures, and in float64 a prompt's
samples are the same whichever fleet (1 engine or 2) drew them, so identical_groups_frac is exactly 1."""
from __future__ import annotations

import pytest

from engine.bench import fleet
from engine.rollout.fleet.dealer import share_window

pytestmark = pytest.mark.slow  # spawns three rollout worker processes


def test_fleet_bench_reports_its_fields_and_float64_groups_are_identical(tiny_model_dir, capsys):
    result = fleet.main(["--json", "--model", str(tiny_model_dir), "--prompts", "4", "--group-size", "2",
                         "--max-new-tokens", "8", "--repeats", "1", "--dtype", "float64", "--no-parallelism-probe"])
    for key in ("tokens_per_s_1", "tokens_per_s_2", "speedup"):
        assert result[key] > 0
    assert result["speedup"] == pytest.approx(result["tokens_per_s_2"] / result["tokens_per_s_1"])
    assert result["identical_groups_frac"] == 1.0
    assert '"identical_groups_frac": 1.0' in capsys.readouterr().out


def test_share_window_gives_every_engine_prompts():
    assert share_window(prompts=16, engines=2, capacity=32) == 8  # not 16 to the first and none to the second
    assert share_window(prompts=17, engines=2, capacity=32) == 9
    assert share_window(prompts=16, engines=2, capacity=2) == 2  # the engine's own bound
    assert share_window(prompts=1, engines=4, capacity=8) == 1
