"""The iteration's groups as the trainer consumes them: generated, scored, filtered, with advantages.

    prompts -> rollout engine (groups as they finish; in prompt order with run.deterministic)
            -> score (tri-model's reward head), one group at a time, stage `score`
            -> dynamic sampling (DAPO): a group whose G rewards are all equal is dropped, new prompts fill in
            -> advantages (algorithm.advantage): per group as it arrives, or over the whole batch at once

Lazy throughout, so under periodic_async the controller trains on the first groups while the engine generates
the rest. Waiting for the engine's next group is the stage `rollout`.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from engine import metrics as M
from engine.algorithms.advantages import ADVANTAGES, needs_full_batch
from engine.config import Config
from engine.rollout.base import RolloutEngine, SamplingParams
from engine.types import PromptItem, RolloutGroup


def in_prompt_order(groups: Iterable[RolloutGroup], prompts: Sequence[PromptItem]) -> Iterator[RolloutGroup]:
    """`groups` in the order of `prompts`, each as soon as every group before it has arrived (run.deterministic:
    gradients then accumulate in one order whatever order generation finished in)."""
    order = [p.index for p in prompts]
    early: dict[int, RolloutGroup] = {}
    for group in groups:
        early[group.prompt.index] = group
        while order and order[0] in early:
            yield early.pop(order.pop(0))
    if order or early:
        raise RuntimeError(f"rollout ended without the groups of prompts {order} (or with unexpected {list(early)})")


def rollout_metrics(groups: Sequence[RolloutGroup]) -> dict[str, float]:
    rewards = torch.cat([g.rewards_G for g in groups])
    scores = torch.cat([g.scores_G for g in groups])  # the correctness function's, before weights and shaping
    lengths = [len(c.token_ids) for g in groups for c in g.completions]
    extracted = [e for g in groups for e in g.extracted]
    truncated = sum(not c.finished for g in groups for c in g.completions)
    return {M.REWARD_MEAN: rewards.mean().item(), M.ACCURACY: (scores > 0.5).float().mean().item(),
            M.REWARD_TIMEOUTS: float(sum(g.reward_timeouts for g in groups)),
            M.REWARD_CRASHES: float(sum(g.reward_crashes for g in groups)),
            M.NO_ANSWER_FRAC: 1.0 - sum(extracted) / len(extracted), M.RESPONSE_LEN: sum(lengths) / len(lengths),
            M.TRUNCATED_FRAC: truncated / len(lengths), **episode_metrics(groups)}


def episode_metrics(groups: Sequence[RolloutGroup]) -> dict[str, float]:
    """Multi-turn trajectories (engine/envs): turns and tool calls per sample, failed calls and environment
    seconds summed over the iteration. Empty for single-turn completions."""
    episodes = [c.episode for g in groups for c in g.completions if c.episode is not None]
    if not episodes:
        return {}
    n = len(episodes)
    return {M.TURNS_PER_SAMPLE: sum(e.turns for e in episodes) / n,
            M.TOOL_CALLS_PER_SAMPLE: sum(e.tool_calls for e in episodes) / n,
            M.TOOL_ERRORS: float(sum(e.tool_errors for e in episodes)),
            M.ENV_TIME: sum(e.env_time_s for e in episodes)}


class GroupStream:
    """One iteration's groups at a time (`groups`); afterwards `sampled` holds every group scored, the ones
    dynamic sampling dropped too, and `figures` the dynamic-sampling metrics."""

    def __init__(self, cfg: Config, rollout: RolloutEngine, prompt_stream, trimodel, timer: M.StageTimer):
        self.cfg = cfg
        self.rollout = rollout
        self.prompt_stream = prompt_stream  # engine.data.stream.PromptStream: later sampling rounds draw from it
        self.trimodel = trimodel  # engine.trimodel.TriModel: its reward head scores a group in place
        self.timer = timer
        self.sampled: list[RolloutGroup] = []
        self.figures: dict[str, float] = {}

    def groups(self, prompts: list[PromptItem], params: SamplingParams) -> Iterator[RolloutGroup]:
        """Scored, kept groups with their advantages, as they arrive."""
        return self._with_advantages(self._kept(prompts, params))

    def _kept(self, prompts: list[PromptItem], params: SamplingParams) -> Iterator[RolloutGroup]:
        """Dynamic sampling: drop a group whose G rewards are all equal and generate new prompts for the missing
        groups, up to algorithm.max_sampling_rounds rounds (without it: every group of one round)."""
        algo, wanted = self.cfg.algorithm, len(prompts)
        kept = rounds = 0
        self.sampled = []
        while kept < wanted and rounds < (algo.max_sampling_rounds if algo.dynamic_sampling else 1):
            if rounds:
                with self.timer.stage("prompts"):
                    prompts = self.prompt_stream.next_batch(wanted - kept)
            rounds += 1
            for group in self._scored(self._arrivals(prompts, params)):
                self.sampled.append(group)
                if algo.dynamic_sampling and (kept == wanted or bool((group.rewards_G == group.rewards_G[0]).all())):
                    continue
                kept += 1
                yield group
        self.figures = {M.DROPPED_GROUPS: float(len(self.sampled) - kept), M.KEPT_GROUPS: float(kept),
                        M.SAMPLING_ROUNDS: float(rounds)}

    def _with_advantages(self, groups: Iterable[RolloutGroup]) -> Iterator[RolloutGroup]:
        """algorithm.advantage per group as groups arrive; a batch estimator over all groups at once."""
        algo = self.cfg.algorithm
        estimator = ADVANTAGES[algo.advantage]
        if needs_full_batch(algo.advantage):
            groups = list(groups)
            if groups:
                adv_BG = estimator(torch.stack([g.rewards_G for g in groups]), std=algo.std)
                for group, adv_G in zip(groups, adv_BG):
                    group.advantages_G = adv_G
        for group in groups:
            if group.advantages_G is None:
                group.advantages_G = estimator(group.rewards_G.unsqueeze(0), std=algo.std)[0]
            yield group

    def _arrivals(self, prompts: list[PromptItem], params: SamplingParams) -> Iterator[RolloutGroup]:
        """The engine's groups as they finish (in prompt order with run.deterministic)."""
        timed = self._timed(self.rollout.generate(prompts, params))
        return in_prompt_order(timed, prompts) if self.cfg.run.deterministic else timed

    def _timed(self, stream: Iterator[RolloutGroup]) -> Iterator[RolloutGroup]:
        while True:
            with self.timer.stage("rollout"):
                group = next(stream, None)
            if group is None:
                return
            yield group

    def _scored(self, groups: Iterable[RolloutGroup]) -> Iterator[RolloutGroup]:
        for group in groups:
            with self.timer.stage("score"):
                self.trimodel.score(group)
            yield group
