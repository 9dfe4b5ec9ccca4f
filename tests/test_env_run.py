"""Multi-turn runs through the controller (env: section): colocated and split, both schedules."""
from __future__ import annotations

import json

import pytest
import torch

from engine import metrics as M
from engine.config import ConfigError, load_config
from engine.envs.registry import environment_factory
from engine.train import run
from engine.trimodel import environment_rewards_G
from engine.types import Completion, Episode
from helpers import ScriptedEnvironment
from test_controller import small_config

pytestmark = pytest.mark.slow

# the miniature model rarely stops on its own: its cut trajectories are trained on, so the log-prob check sees them
SCRIPTED = {"env.name": "helpers:ScriptedEnvironment", "env.max_tokens": 64, "rollout.max_new_tokens": 24,
            "algorithm.truncated": "train"}


def _lines(tmp_path):
    text = (tmp_path / "runs" / "t" / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()][1:]  # [0]: the accuracy before training


def test_environment_reward_parts_add_to_each_trajectory_reward():
    def completion(parts):
        return Completion([1], [0.0], True, episode=Episode(turns=1, reward_parts=parts) if parts is not None else None)

    r_G = environment_rewards_G([completion((("a", 0.5), ("b", -0.25))), completion(()), completion(None)])
    assert r_G.tolist() == [0.25, 0.0, 0.0]


def test_a_multiturn_run_logs_its_episodes_and_trains_on_what_was_sampled(tiny_model_dir, tmp_path):
    run(small_config(tiny_model_dir, tmp_path, **SCRIPTED, **{"run.checkpoint_every": 0}))
    for line in _lines(tmp_path):
        turns, calls = line[M.TURNS_PER_SAMPLE], line[M.TOOL_CALLS_PER_SAMPLE]
        assert 1.0 <= turns <= 2.0
        # ScriptedEnvironment answers every first turn with one call: each second turn follows exactly one
        assert calls == pytest.approx(turns - 1.0)
        assert line[M.TOOL_ERRORS] == 0.0 and line[M.ENV_TIME] >= 0.0
        # the trainer's log-probs of the sampled tokens equal the sampler's, observations in the context
        assert line[M.LOGPROB_DIFF_MAX] < 1e-4


def test_a_multiturn_split_periodic_async_run_trains(tiny_model_dir, tmp_path):
    run(small_config(tiny_model_dir, tmp_path, **SCRIPTED, **{
        "run.checkpoint_every": 0, "pipeline.placement": "split", "pipeline.schedule": "periodic_async",
        "optim.micro_batch_size": 4}))
    for line in _lines(tmp_path):
        assert line[M.TURNS_PER_SAMPLE] >= 1.0 and M.OVERLAP_FRAC in line
        assert line[M.LOGPROB_DIFF_MAX] < 1e-4


def test_env_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="env.name"):
        load_config(None, ["model.path=x", "env.name=chess"])
    with pytest.raises(ConfigError, match="env.observation_format"):
        load_config(None, ["model.path=x", "env.name=calculator", "env.observation_format=none"])
    with pytest.raises(ConfigError, match="env.max_turns"):
        load_config(None, ["model.path=x", "env.name=calculator", "env.max_turns=0"])
    assert load_config(None, ["model.path=x", "env.name=calculator", "rollout.engine=vllm"]).env.enabled
    with pytest.raises(ConfigError, match="vLLM multi-turn rollouts with model.lora"):
        load_config(None, ["model.path=x", "env.name=calculator", "rollout.engine=vllm", "model.lora.rank=4"])


def test_env_names_resolve_to_factories():
    calc = load_config(None, ["model.path=x", "env.name=calculator"]).env
    env = environment_factory(calc)("Question: 2 * 3\nAnswer:", "6")
    obs = env.step('<tool_call>\n{"name": "calculator", "arguments": {"expression": "123 * 45"}}\n</tool_call>')
    assert obs.text == "5535" and obs.tool_calls == 1 and obs.tool_errors == 0
    custom = load_config(None, ["model.path=x", "env.name=helpers:ScriptedEnvironment"]).env
    assert environment_factory(custom) is ScriptedEnvironment
    with pytest.raises(ValueError, match="env.name 'helpers:nothing'"):
        environment_factory(load_config(None, ["model.path=x", "env.name=helpers:nothing"]).env)
