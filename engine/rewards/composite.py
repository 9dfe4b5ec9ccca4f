"""The reward of a group: weighted reward functions, an optional reward model, the correctness function apart.

    reward_G = sum_i weights[i] * functions[i](completion_g, reference[, prompt])
               + model_weight * reward_model(prompt + completion_g)              (reward.model set)
    score_G  = functions[0](...)       # the correctness function: accuracy (score > 0.5), no-answer share and
                                       # held-out accuracy come from it alone; a timed-out or crashed
                                       # call scores 0

(`TriModel.score` adds the optional overlong penalty on top.) Each function is loaded once by import path
(registry.py); one whose signature names `prompt` also gets the rendered prompt text. With
`reward.timeout_s > 0` the calls run in a worker process with a per-call timeout (worker.py); else in-process.
The reward model (model.py) needs the packed batch, so `TriModel.score` runs it; it is loaded here.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.config import RewardConfig
from engine.rewards.model import RewardModel, load_reward_model
from engine.rewards.registry import RewardResult, Scorer, load_reward_fn
from engine.rewards.worker import Call, CallResults, RewardWorker


@dataclass(frozen=True, slots=True)
class FunctionScores:
    """One group's reward-function results (G completions)."""

    correct_G: torch.Tensor  # float32: the first (correctness) function's scores
    weighted_G: torch.Tensor  # float32: sum_i weights[i] * scores of function i
    extracted: list[bool]  # the first function's: did it find an answer
    timeouts: int  # calls that ran past the timeout (scored 0, no answer)
    crashes: int  # calls during which the worker process died (scored 0, no answer)


class RewardFunctions:
    """Weighted reward functions, called in-process (timeout_s == 0) or in a worker with a per-call timeout."""

    def __init__(self, scorers: Sequence[Scorer], weights: Sequence[float], timeout_s: float = 0.0):
        if not scorers or len(scorers) != len(weights):
            raise ValueError(f"need one weight per reward function, got {len(weights)} for {len(scorers)}")
        self.scorers = tuple(scorers)
        self.weights_F = torch.tensor(weights, dtype=torch.float32)
        self.worker = RewardWorker([s.path for s in scorers], timeout_s) if timeout_s > 0 else None

    def score_group(self, completions: Sequence[str], reference: str, prompt: str) -> FunctionScores:
        """Every function on every completion: F * G calls, function-major."""
        F, G = len(self.scorers), len(completions)
        out = self.run([(i, text, reference, prompt) for i in range(F) for text in completions])
        scores_FG = torch.tensor([r.score for r in out.results], dtype=torch.float32).view(F, G)
        weighted_G = (self.weights_F[:, None] * scores_FG).sum(0)  # == scores_G exactly for one weight-1 function
        return FunctionScores(scores_FG[0], weighted_G, [r.extracted for r in out.results[:G]], out.timeouts,
                              out.crashes)

    def correctness(self, completion: str, reference: str, prompt: str = "") -> RewardResult:
        """The first function alone (held-out evaluation); a timed-out or crashed call is RewardResult(0.0, False)."""
        (result,) = self.run([(0, completion, reference, prompt)]).results
        return result

    def run(self, calls: Sequence[Call]) -> CallResults:
        """Results of `calls` in order, and how many timed out or crashed (never any in-process)."""
        if self.worker is not None:
            return self.worker.run(calls)
        return CallResults([self.scorers[i](text, reference, prompt) for i, text, reference, prompt in calls])

    def close(self) -> None:
        """Stop the worker process, if any (a later call would start a fresh one)."""
        if self.worker is not None:
            self.worker.stop()


@dataclass(eq=False, slots=True)
class Rewards:
    """What `TriModel.score` needs: the weighted functions and, when configured, the reward model."""

    functions: RewardFunctions
    model: RewardModel | None = None

    def close(self) -> None:
        """Release the reward functions' worker process; called once the run is over."""
        self.functions.close()


def build_rewards(cfg: RewardConfig, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32,
                  attention_kernel: str = "portable", tokenizer=None, load_model: bool = True) -> Rewards:
    """The run's rewards from its `reward` section. Every function is imported now (a bad path fails before any
    work). The reward model is loaded, in `dtype` on `device`, only when `cfg.model` is set and `load_model`
    (torchrun ranks > 0 never score, so they skip it); `tokenizer` is the actor's, to check the model's."""
    paths, weights = zip(*cfg.weighted_functions)
    functions = RewardFunctions([load_reward_fn(p) for p in paths], weights, cfg.timeout_s)
    model = None
    if cfg.model is not None and load_model:
        model = load_reward_model(cfg.model, cfg.model_weight, device or torch.device("cpu"), dtype,
                                  attention_kernel, tokenizer)
    return Rewards(functions, model)
