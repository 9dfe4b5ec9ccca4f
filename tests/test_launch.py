"""The three launchers and the shipped recipes run end to end on the miniature model (subprocesses)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY_RUN = ["run.iterations=1", "run.progress=false", "backend.name=cpu",
            "rollout.prompts_per_iteration=2", "rollout.group_size=2", "rollout.max_new_tokens=4",
            "eval.heldout_size=4", "eval.max_new_tokens=4"]


def _launch(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _args(tiny_model_dir, tmp_path, recipe="recipes/quickstart.yaml"):
    synthetic = ["data.train_size=32"] if recipe == "recipes/quickstart.yaml" else []  # gsm8k reads no train_size
    return [recipe, f"model.path={tiny_model_dir}", f"run.output_dir={tmp_path}", *TINY_RUN, *synthetic]


@pytest.mark.parametrize("launcher", ["python", "torchrun", "cadence"])
def test_launchers(launcher, tiny_model_dir, tmp_path):
    prefix = {"python": [sys.executable, "-m", "engine.train"],
              "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "-m", "engine.train"],
              "cadence": [sys.executable, "-m", "engine.cli", "train"]}[launcher]
    result = _launch(prefix + _args(tiny_model_dir, tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "quickstart" / "summary.json").read_text())["iterations"] == 1


def test_gsm8k_recipe_runs_two_iterations_on_a_tiny_model(tiny_model_dir, tmp_path):
    args = _args(tiny_model_dir, tmp_path, "recipes/grpo_gsm8k.yaml") + [
        "run.iterations=2", "data.path=tests/assets/gsm8k_tiny", "model.dtype=float32",
        "model.gradient_checkpointing=false", "rollout.max_new_tokens=4", "eval.heldout_size=4"]
    result = _launch([sys.executable, "-m", "engine.train", *args], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (tmp_path / "grpo_gsm8k" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "policy/kl" in json.loads(lines[2])  # iteration 0: the accuracy before training


def test_tool_recipe_runs_multiturn_on_a_tiny_model(tiny_model_dir, tmp_path):
    args = _args(tiny_model_dir, tmp_path, "recipes/tool_calc.yaml") + ["data.train_size=32"]
    result = _launch([sys.executable, "-m", "engine.train", *args], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    line = json.loads((tmp_path / "tool_calc" / "metrics.jsonl").read_text().splitlines()[1])
    assert line["rollout/turns_per_sample"] >= 1.0 and "rollout/tool_calls_per_sample" in line and "env/time" in line


@pytest.mark.parametrize("override, message", [
    (["optim.lrr=1"], "command line: optim.lrr: unknown key"),
    (["optim.lr=fast"], "command line: optim.lr: expected float, got 'fast'"),
    (["model.path=/nonexistent/model"], "model.path: folder /nonexistent/model does not exist"),
])
def test_bad_input_fails_fast_with_a_clear_message(override, message, tiny_model_dir, tmp_path):
    result = _launch([sys.executable, "-m", "engine.train", *_args(tiny_model_dir, tmp_path), *override], tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "quickstart").exists()  # nothing half-written


def test_a_dataset_line_that_is_not_json_is_named(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ROOT / "tests/assets/gsm8k_tiny", data)
    with open(data / "train.jsonl", "a") as f:
        f.write("{not json\n")
    args = _args(tiny_model_dir, tmp_path, "recipes/grpo_gsm8k.yaml") + [f"data.path={data}"]
    result = _launch([sys.executable, "-m", "engine.train", *args], tmp_path)
    assert result.returncode == 2 and "train.jsonl:33" in result.stderr, result.stderr[-2000:]


def test_a_truncated_checkpoint_is_never_resumed_from(tiny_model_dir, tmp_path):
    args = _args(tiny_model_dir, tmp_path) + ["run.iterations=2", "run.checkpoint_every=1", "run.keep_checkpoints=5"]
    assert _launch([sys.executable, "-m", "engine.train", *args], tmp_path).returncode == 0
    weights = tmp_path / "quickstart" / "checkpoints" / "iter_000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = _launch([sys.executable, "-m", "engine.train", *args, "run.resume=true", "run.iterations=3"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stdout and "iter_000001" in result.stdout
