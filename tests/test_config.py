from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import Config, ConfigError, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]


def _recipe(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_recipe_and_overrides_merge_into_typed_sections(tmp_path):
    path = _recipe(tmp_path, "model:\n  path: /m\noptim:\n  lr: 1e-4\n  micro_batch_size: 4\n")
    cfg = load_config(path, ["optim.lr=3e-4", "rollout.group_size=4"])
    assert isinstance(cfg, Config)
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.micro_batch_size == 4
    assert cfg.rollout.group_size == 4 and cfg.model.path == "/m"
    assert cfg.run.iterations == 10  # dataclass default


@pytest.mark.parametrize("text, overrides, message", [
    ("model:\n  path: /m\n  pth: 1\n", [], r"r\.yaml: model\.pth: unknown key; allowed keys here: dtype, gradient"),
    ("model:\n  path: /m\noptim:\n  lr: fast\n", [], r"r\.yaml: optim\.lr: expected float, got 'fast'"),
    ("model:\n  path: /m\n", ["run.iterations=2.5"], r"command line: run\.iterations: expected int"),
    ("optim:\n  lr: 1.0\n", [], r"model\.path: required value is missing"),
    ("model:\n  path: /m\nbackend:\n  name: tpu\n", [], r"backend\.name: got 'tpu'; allowed: auto, cpu, cuda, ascend"),
    ("model:\n  path: /m\nbogus:\n  a: 1\n", [], r"bogus: unknown key; allowed keys here: algorithm, backend"),
    ("model:\n  path: /m\n", ["iterations"], r"command line: 'iterations': expected key=value"),
    ("model: [1, 2\n", [], r"r\.yaml: not valid YAML"),
    ("model:\n  path: /m\n", ["rollout.max_batch_sequences=4"], r"rollout\.max_batch_sequences: must be >= "
     r"rollout\.group_size \(8\)"),
    ("model:\n  path: /m\n", ["rollout.group_size=1"], r"rollout\.group_size: must be >= 2, got 1"),
    ("model:\n  path: /m\n", ["rollout.temperature=0"], r"rollout\.temperature: must be > 0 for training"),
    ("model:\n  path: /m\ndata:\n  path: /d\n", [], r"data\.path: not read by data\.source=synthetic"),
    ("model:\n  path: /m\n", ["data.source=gsm8k", "data.prompt_key=q"], r"data\.prompt_key: not read by "
     r"data\.source=gsm8k"),
    ("model:\n  path: /m\n", ["rollout.vllm.kv_cache_gib=2"], r"rollout\.vllm: only read with rollout\.engine=vllm"),
    ("model:\n  path: /m\n", ["algorithm.truncated=penalty"], r"algorithm\.overlong_buffer: must be > 0"),
    ("model:\n  path: /m\n", ["algorithm.policy_loss=gspo"], r"algorithm\.loss_aggregation: GSPO averages"),
    ("model:\n  path: /m\n", ["algorithm.ppo_mini_batches=3"], r"algorithm\.ppo_mini_batches: 3 must divide"),
    ("model:\n  path: /m\n", ["algorithm.truncated=penalty", "algorithm.overlong_buffer=65"],
     r"algorithm\.overlong_buffer: 65 must be <= rollout\.max_new_tokens \(64\)"),
    ("model:\n  path: /m\n", ["model.dtype=int8"], r"model\.dtype: got 'int8'; allowed: auto, float32"),
    ("model:\n  path: /m\n", ["run.loggers=[neptune]"], r"run\.loggers: got 'neptune'; allowed: tensorboard, wandb, "
     r"mlflow"),
    ("model:\n  path: /m\n", ["run.loggers=wandb"], r"run\.loggers: expected a list, got 'wandb'"),
    ("model:\n  path: /m\n", ["run.loggers=[wandb,wandb]"], r"run\.loggers: each logger at most once"),
    ("model:\n  path: /m\n", ["run.mlflow_tracking_uri=sqlite:///x.db"], r"run\.mlflow_tracking_uri: only read with "
     r"mlflow in run\.loggers"),
    ("model:\n  path: /m\n", ["run.log_samples=-1"], r"run\.log_samples: must be >= 0"),
    ("model:\n  path: /m\n", ["eval.every=-2"], r"eval\.every: must be >= 0 \(0 = off\), got -2"),
])
def test_bad_input_fails_with_one_line_naming_source_and_key(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(_recipe(tmp_path, text), overrides)
    assert "\n" not in str(info.value)


def test_missing_recipe_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: recipe file not found"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_reloads_to_the_same_value(tmp_path):
    cfg = load_config(None, ["model.path=/m", "algorithm.kl_coef=0.01"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_is_valid(recipe):
    load_config(recipe, ["model.path=/some/model"])  # recipes may leave model.path to the command line


def test_loggers_default_to_none_and_parse_as_a_list_from_the_command_line(tmp_path):
    assert load_config(None, ["model.path=/m"]).run.loggers is None  # tensorboard when installed
    cfg = load_config(None, ["model.path=/m", "run.loggers=[wandb,mlflow]", "run.log_samples=0", "eval.every=5"])
    assert cfg.run.loggers == ["wandb", "mlflow"] and cfg.run.log_samples == 0 and cfg.eval.every == 5
    assert load_config(None, ["model.path=/m", "run.loggers=[]"]).run.loggers == []
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
