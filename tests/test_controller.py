"""End-to-end runs of the controller on a miniature model: run folder, checkpoints, exact resume."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, GenerationConfig

from engine.config import load_config
from engine import metrics as M
from engine.controller import Controller
from engine.group_stream import rollout_metrics
from engine.rollout.native import NativeRolloutEngine
from engine.train import run
from engine.types import Completion, PromptItem, RolloutGroup

pytestmark = pytest.mark.slow


def small_config(model_dir, tmp_path, **extra):
    overrides = {
        "model.path": str(model_dir), "run.output_dir": str(tmp_path / "runs"), "run.name": "t",
        "run.iterations": 3, "run.checkpoint_every": 1, "run.progress": False, "backend.name": "cpu",
        "data.train_size": 64, "rollout.prompts_per_iteration": 3, "rollout.group_size": 4,
        "rollout.max_new_tokens": 8, "eval.heldout_size": 8, "eval.max_new_tokens": 8, "optim.lr": 1e-2,
        "optim.micro_batch_size": 8, **extra}
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


def final_weights(tmp_path, iteration=3):
    return load_file(str(tmp_path / "runs" / "t" / "checkpoints" / f"iter_{iteration:06d}" / "model.safetensors"))


def test_a_run_writes_its_folder(tiny_model_dir, tmp_path):
    summary = run(small_config(tiny_model_dir, tmp_path))
    run_dir = tmp_path / "runs" / "t"
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [l["iteration"] for l in lines] == [0, 1, 2, 3]  # 0: the accuracy before training
    lines = lines[1:]
    for key in ("reward/mean", "reward/accuracy", "policy/kl", "policy/entropy", "policy/clip_frac",
                "rollout/response_len_mean", "rollout/truncated_frac", "optim/grad_norm", "perf/tokens_per_s",
                "time/rollout", "time/train"):
        assert key in lines[0], key
    assert lines[0]["policy/logprob_diff_max"] < 1e-4  # trainer and rollout agree on the sampling policy
    assert set(summary) >= {"accuracy_before", "accuracy_after", "heldout_size"} and summary["heldout_size"] == 8
    assert json.loads((run_dir / "summary.json").read_text())["policy_version"] == 3
    assert (run_dir / "config.yaml").is_file() and (run_dir / "reward_curve.png").is_file()


def kill_in_third_iteration_then_resume(model_dir, out, monkeypatch, **extra) -> None:
    """A 3-iteration run in `out` killed in its third iteration, then resumed to the end."""
    original = Controller.iteration

    def dies_in_third_iteration(self, k):
        if k == 2:
            raise KeyboardInterrupt("killed")
        return original(self, k)

    monkeypatch.setattr(Controller, "iteration", dies_in_third_iteration)
    with pytest.raises(KeyboardInterrupt):
        run(small_config(model_dir, out, **extra))
    monkeypatch.setattr(Controller, "iteration", original)
    run(small_config(model_dir, out, **extra, **{"run.resume": "true"}))


def test_a_killed_run_resumes_to_the_same_parameters(tiny_model_dir, tmp_path, monkeypatch):
    run(small_config(tiny_model_dir, tmp_path / "a"))
    uninterrupted = final_weights(tmp_path / "a")
    kill_in_third_iteration_then_resume(tiny_model_dir, tmp_path / "b", monkeypatch)
    resumed = final_weights(tmp_path / "b")
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0)
    lines = (tmp_path / "b" / "runs" / "t" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["iteration"] for l in lines] == [0, 1, 2, 3]  # nothing lost, nothing replayed


def test_an_existing_run_is_not_clobbered(tiny_model_dir, tmp_path):
    cfg = small_config(tiny_model_dir, tmp_path, **{"run.iterations": 1})
    run(cfg)
    with pytest.raises(Exception, match="already exists; set run.resume=true"):
        run(cfg)


def test_rollout_metrics_report_the_share_of_truncated_responses():
    def group(index: int, finished: list[bool]) -> RolloutGroup:
        completions = [Completion([5, 6], [0.0, 0.0], f) for f in finished]
        g = RolloutGroup(PromptItem(index, [1, 2], "3"), completions, version=0)
        g.rewards_G = g.scores_G = torch.zeros(len(finished))
        g.extracted = [True] * len(finished)
        return g

    metrics = rollout_metrics([group(0, [True, False, True, True]), group(1, [False, False, True, True])])
    assert metrics[M.TRUNCATED_FRAC] == 3 / 8
    assert rollout_metrics([group(0, [True, True])])[M.TRUNCATED_FRAC] == 0.0


def test_rollouts_and_evaluations_stop_at_generation_config_ids_and_rollout_stop(tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    eos = AutoTokenizer.from_pretrained(model_dir).eos_token_id
    GenerationConfig(eos_token_id=[7, eos, 9]).save_pretrained(model_dir)
    requests = []
    original = NativeRolloutEngine.generate
    monkeypatch.setattr(NativeRolloutEngine, "generate",
                        lambda self, prompts, params: requests.append(params) or original(self, prompts, params))
    run(small_config(model_dir, tmp_path, **{"run.iterations": 1, "rollout.stop": "['##','Question']"}))
    assert {p.temperature > 0 for p in requests} == {True, False}  # rollouts and the before/after evaluations
    assert {(p.stop_token_ids, p.stop_strings) for p in requests} == {((eos, 7, 9), ("##", "Question"))}


def test_a_run_writes_samples_of_its_first_groups_each_iteration(tiny_model_dir, tmp_path):
    run(small_config(tiny_model_dir, tmp_path, **{"run.iterations": 2, "run.log_samples": 2, "eval.before": "false",
                                                  "eval.after": "false"}))
    lines = [json.loads(l) for l in (tmp_path / "runs" / "t" / "samples.jsonl").read_text().splitlines()]
    assert [l["iteration"] for l in lines] == [1, 1, 2, 2]  # 2 of the 3 groups per iteration
    for line in lines:
        assert set(line) == {"iteration", "prompt", "reference", "completions", "rewards", "advantages"}
        assert line["prompt"].startswith("Question:") and line["reference"]
        assert len(line["completions"]) == len(line["rewards"]) == len(line["advantages"]) == 4  # G
        assert all(isinstance(text, str) for text in line["completions"])
        # grpo advantages: the group's rewards, centred (population std)
        mean = sum(line["rewards"]) / 4
        assert sum(line["advantages"]) == pytest.approx(0.0, abs=1e-5)
        assert [a > 0 for a in line["advantages"]] == [r > mean + 1e-6 for r in line["rewards"]]


def test_no_samples_file_with_log_samples_zero(tiny_model_dir, tmp_path):
    run(small_config(tiny_model_dir, tmp_path, **{"run.iterations": 1, "run.log_samples": 0, "eval.before": "false",
                                                  "eval.after": "false", "run.loggers": "[]"}))
    run_dir = tmp_path / "runs" / "t"
    assert (run_dir / "metrics.jsonl").is_file() and not (run_dir / "samples.jsonl").exists()
    assert not (run_dir / "tensorboard").exists()  # run.loggers=[]: no tracker at all


def test_eval_every_logs_held_out_accuracy_on_its_iterations_and_before_and_after(tiny_model_dir, tmp_path,
                                                                                   monkeypatch):
    calls = []
    original = Controller._evaluate
    monkeypatch.setattr(Controller, "_evaluate", lambda self: calls.append(self.trainer.version) or original(self))
    summary = run(small_config(tiny_model_dir, tmp_path, **{"run.iterations": 3, "eval.every": 2}))
    assert calls == [0, 2, 3]  # policy versions evaluated: the last one once, for its line and the summary
    lines = [json.loads(l) for l in (tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [l["iteration"] for l in lines] == [0, 1, 2, 3]
    assert [l["iteration"] for l in lines if M.EVAL_ACCURACY in l] == [0, 2, 3]  # before, every 2, after
    assert [l["iteration"] for l in lines if M.EVAL_TIME in l] == [2, 3]
    assert summary["accuracy_before"] == lines[0][M.EVAL_ACCURACY]
    assert summary["accuracy_after"] == lines[3][M.EVAL_ACCURACY]  # measured once, on the last line
    saved = json.loads((tmp_path / "runs" / "t" / "summary.json").read_text())
    assert saved["accuracy_after"] == summary["accuracy_after"]
