"""The controller: one readable loop drives the whole GRPO run.

    for iteration k:
        prompts  <- next B prompts of the stream
        sync     :  rollout engine receives policy weights version k          (barrier)
        rollout  :  G completions per prompt, all from version k, streamed group by group
        score    :  rewards (tri-model's reward head), per arriving group (engine/group_stream.py: scoring,
                    dynamic sampling and advantages on the stream)
        train    :  forward/backward per micro-batch of groups, gradients accumulated
        step     :  exactly one optimizer step -> version k+1                 (barrier)

`pipeline.schedule` changes only `_rollout_and_train`: `sync` draws every group before training on any;
`periodic_async` (arXiv 2511.18871, docs/pipeline.md) trains on each micro-batch as soon as its groups arrive,
while the rollout worker (pipeline.placement=split) generates the rest. Both are on-policy: one weight sync
and one optimizer step per iteration, and the trainer rejects a group of any other version.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import metrics as M
from engine.checkpoint import CheckpointError, capture_rng, restore_rng
from engine.config import Config
from engine.console import log
from engine.evaluate import evaluate, warn_if_truncated
from engine.group_stream import GroupStream, rollout_metrics
from engine.rollout.base import RolloutEngine, SamplingParams
from engine.rollout.stopping import stop_token_ids
from engine.runlog import RunLog
from engine.timeline import TimelineRecorder
from engine.tracking import TrackerContext, open_trackers
from engine.trainer import Trainer
from engine.types import PromptItem, RolloutGroup


TIMELINE_FILE = "timeline.png"
TIMELINE_SPANS_FILE = "timeline.jsonl"  # every iteration's spans, one line each
TIMELINE_ITERATIONS = 3  # the plot shows the latest iterations: a whole run's bars would be too thin to read


@dataclass(slots=True)
class Components:
    """Everything a run needs, built once from the recipe by `engine.build.build_components`."""

    cfg: Config
    backend: object
    device: torch.device
    tokenizer: object
    trainer: Trainer  # or, under torchrun, engine.parallel.spmd.TrainerGroup (the same methods)
    rollout: RolloutEngine
    stream: object  # engine.data.stream.PromptStream
    heldout: list[PromptItem]
    run_dir: Path
    checkpoints: object  # engine.checkpoint.RunCheckpoints or engine.parallel.checkpoint.ShardedCheckpoints
    world_size: int = 1  # trainer ranks
    # The tokenizer's eos and the model's generation_config.eos_token_id (engine/rollout/stopping.py); empty:
    # the tokenizer's eos alone.
    stop_token_ids: tuple[int, ...] = ()
    startup_peak_bytes: tuple[int, ...] = ()  # each rank's peak memory once its models were built


def micro_batches(groups: Iterable[RolloutGroup], max_sequences: int) -> Iterator[list[RolloutGroup]]:
    """Whole groups, at most `max_sequences` sequences per micro-batch (a larger group goes alone):
    a group is never split, so its prompt is packed once. A batch is handed over as soon as another group of
    the same size could not join it, so a consumer of a stream trains without waiting for the next arrival."""
    batch: list[RolloutGroup] = []
    size = 0
    for group in groups:
        if batch and size + group.group_size > max_sequences:
            yield batch
            batch, size = [], 0
        batch.append(group)
        size += group.group_size
        if size + group.group_size > max_sequences:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def mean_metrics(steps: Sequence[dict[str, float]]) -> dict[str, float]:
    """The iteration's update metrics: the mean over the optimizer steps that report each (the max for
    logprob_diff_max, which only the first step reports; the sum for skipped_steps)."""
    if not steps:
        return {}
    keys = dict.fromkeys(key for s in steps for key in s)
    out = {}
    for key in keys:
        values = [s[key] for s in steps if key in s]
        out[key] = {M.LOGPROB_DIFF_MAX: max, M.SKIPPED_STEPS: sum}.get(key, lambda v: sum(v) / len(v))(values)
    out[M.OPTIMIZER_STEPS] = float(len(steps))
    return out


def sampling_params(cfg: Config, k: int, stop_token_ids: tuple[int, ...]) -> SamplingParams:
    """Iteration k's sampling. The seed is a function of (run seed, iteration) alone, so a resumed run samples
    what the uninterrupted one would have."""
    r = cfg.rollout
    return SamplingParams(n=r.group_size, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                          top_k=r.top_k, stop_token_ids=stop_token_ids, stop_strings=tuple(r.stop),
                          seed=cfg.run.seed * 1_000_003 + k, ignore_eos=r.ignore_eos)


def warn_on_logprob_disagreement(k: int, step_metrics: dict[str, float], limit: float) -> None:
    """The rollout engine and the trainer should assign the sampled tokens the same log-probs."""
    diff = step_metrics.get(M.LOGPROB_DIFF_MAX, 0.0)
    if diff > limit:
        log.warning(f"iteration {k + 1}: {M.LOGPROB_DIFF_MAX}={diff:.3g} exceeds rollout.logprob_diff_warn="
                    f"{limit:g}: the rollout engine samples from a different distribution than the trainer "
                    f"trains (consider algorithm.rollout_is)")


class Controller:
    def __init__(self, parts: Components):
        self.parts = parts
        self.cfg = parts.cfg
        self.trainer = parts.trainer
        self.timer = M.StageTimer(synchronize=parts.backend.synchronize, lane="trainer", keep_spans=True)
        self.checkpoints = parts.checkpoints
        self.accuracy_before: float | None = None
        self.trained: list[RolloutGroup] = []  # the iteration's groups trained on (with advantages)
        self.accuracy_after: float | None = None  # eval/accuracy of the last iteration, once measured
        self.supply = GroupStream(self.cfg, parts.rollout, parts.stream, parts.trainer.trimodel, self.timer)
        self.timeline = TimelineRecorder(parts.run_dir / TIMELINE_SPANS_FILE, keep=TIMELINE_ITERATIONS)

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        log = None
        try:
            start = self._restore() if self.cfg.run.resume else 0
            log = self._open_log(start)
            if start == 0 and self.cfg.eval.before:
                self.accuracy_before = self._evaluate()
                log.log(0, {M.EVAL_ACCURACY: self.accuracy_before})
            for k in range(start, self.cfg.run.iterations):
                metrics = self.iteration(k)
                if self._eval_due(k + 1):  # on the iteration's line, so it is written before its checkpoint
                    metrics.update(self._timed_evaluation(k + 1))
                log.log(k + 1, metrics)
                log.log_samples(k + 1, self.trained)
                if self._checkpoint_due(k + 1):
                    self._checkpoint(k + 1)
            summary = self._summary()
            self.checkpoints.wait()
            log.write_summary(summary)
            self.timeline.plot(self.parts.run_dir / TIMELINE_FILE, f"schedule={self.cfg.pipeline.schedule}, "
                                                                   f"placement={self.cfg.pipeline.placement}")
        except BaseException:
            self._finish_checkpoint_write()
            raise
        finally:  # on every path: no worker process (rollout, reward) may outlive the run
            if log is not None:
                log.close()
            self.parts.rollout.close()
            self.trainer.trimodel.close()
        self.trainer.close()  # under torchrun the other ranks stop following (on a failure the control plane stops them)
        return summary

    def iteration(self, k: int) -> dict[str, float]:
        """One on-policy GRPO iteration: sync, rollout, score, train, step."""
        t0 = time.perf_counter()
        self.parts.rollout.pop_spans()  # drop what the engine did between iterations (evaluation)
        with self.timer.stage("prompts"):
            prompts = self.parts.stream.next_batch(self.cfg.rollout.prompts_per_iteration)
        with self.timer.stage("sync_weights"):
            self.parts.rollout.load_weights(self.trainer.rollout_weights(), self.trainer.version)
        groups, step_metrics = self._rollout_and_train(prompts, sampling_params(self.cfg, k, self._stop_ids()))
        if not groups:  # dynamic sampling found no informative group (verl's DAPO stops here too)
            raise RuntimeError(f"iteration {k + 1}: no group with unequal rewards in "
                               f"{self.cfg.algorithm.max_sampling_rounds} sampling rounds; raise "
                               "algorithm.max_sampling_rounds or check the reward and the data's difficulty")
        self.trained = groups
        with self.timer.stage("step"):
            step_metrics.update(self.trainer.end_iteration())
        warn_on_logprob_disagreement(k, step_metrics, self.cfg.rollout.logprob_diff_warn)
        t1 = time.perf_counter()
        elapsed = t1 - t0
        sampled = self.supply.sampled  # with dynamic sampling more than `groups`: generated, scored, then dropped
        n_tokens = sum(len(c.token_ids) for g in sampled for c in g.completions)
        perf = {M.WORLD_SIZE: float(self.parts.world_size), M.TOKENS_PER_S: n_tokens / elapsed,
                M.STARTUP_PEAK_BYTES: float(max(self.parts.startup_peak_bytes, default=0)),
                M.SAMPLES_PER_S: sum(g.group_size for g in sampled) / max(elapsed, 1e-9), M.ITERATION_TIME: elapsed}
        return {**rollout_metrics(sampled), **self.parts.rollout.metrics(), **step_metrics, **perf,
                **self.supply.figures, **self.timer.pop(), **self._pipeline_metrics(k + 1, t0, t1)}

    def _rollout_and_train(self, prompts: list[PromptItem],
                           params: SamplingParams) -> tuple[list[RolloutGroup], dict[str, float]]:
        """Score and train on the groups in the order the schedule hands them over; return the groups and the
        iteration's update metrics (averaged over its optimizer steps).

        sync: the whole rollout is drawn first (generate all, then train). periodic_async: groups are drawn
        lazily, so each micro-batch trains while the engine generates the rest. Gradients are sums, normalised
        at the step, so the update is the same either way (to round-off; bit for bit with run.deterministic).
        With algorithm.ppo_mini_batches = M, every B / M groups make one optimizer step, taken as soon as they
        have arrived; algorithm.ppo_epochs > 1 repeats the stored mini-batches after the last one.
        """
        arrivals = self.supply.groups(prompts, params)
        if self.cfg.pipeline.schedule == "sync":
            arrivals = iter(list(arrivals))
        size = self.cfg.rollout.prompts_per_iteration // self.cfg.algorithm.ppo_mini_batches
        groups: list[RolloutGroup] = []
        steps: list[dict[str, float]] = []
        while mini_batch := self._update(itertools.islice(arrivals, size), steps):
            groups.extend(mini_batch)
        for _ in range(self.cfg.algorithm.ppo_epochs - 1):
            for start in range(0, len(groups), size):
                self._update(iter(groups[start:start + size]), steps)
        return groups, mean_metrics(steps)

    def _update(self, mini_batch: Iterator[RolloutGroup], steps: list[dict[str, float]]) -> list[RolloutGroup]:
        """Forward/backward on each micro-batch of `mini_batch` as soon as its groups arrive, then one optimizer
        step (appended to `steps`); return the mini-batch's groups (none: the arrivals are over)."""
        taken: list[RolloutGroup] = []
        for batch in micro_batches(mini_batch, self.cfg.optim.micro_batch_size):
            with self.timer.stage("train"):
                self.trainer.accumulate(batch)
            taken.extend(batch)
        if taken:
            with self.timer.stage("step"):
                steps.append(self.trainer.step_mini_batch())
        return taken

    def _pipeline_metrics(self, iteration: int, t0: float, t1: float) -> dict[str, float]:
        """The iteration's pipeline/* metrics; its spans go to timeline.jsonl and the run's timeline plot."""
        origin = self.timer.origin  # engine spans are on perf_counter, the timer's are relative to its origin
        return self.timeline.record(iteration, (t0 - origin, t1 - origin), self.timer.pop_spans(),
                                    self.parts.rollout.pop_spans(), origin)

    def _stop_ids(self) -> tuple[int, ...]:
        """Every id that ends a turn: the tokenizer's eos and the model's generation_config ids (a chat model's
        end-of-turn token is often only there)."""
        return self.parts.stop_token_ids or stop_token_ids(self.parts.tokenizer, None)

    def _evaluate(self) -> float:
        """Greedy held-out accuracy of the current policy (the rollout engine is synced to it first)."""
        trimodel = self.trainer.trimodel
        self.parts.rollout.load_weights(self.trainer.rollout_weights(), self.trainer.version)
        result = evaluate(self.parts.rollout, self.parts.heldout, trimodel.decode, trimodel.reward_fn,
                          max_new_tokens=self.cfg.eval.max_new_tokens, batch_size=self.cfg.eval.batch_size,
                          stop_token_ids=self._stop_ids(), stop_strings=tuple(self.cfg.rollout.stop),
                          progress=self.cfg.run.progress)
        warn_if_truncated(result, self.cfg.eval.max_new_tokens, "eval.max_new_tokens")
        return result.accuracy

    def _eval_due(self, done: int) -> bool:
        """eval.every, and the last iteration when eval.after (its accuracy is the summary's accuracy_after)."""
        every = self.cfg.eval.every
        return (every > 0 and done % every == 0) or (done == self.cfg.run.iterations and self.cfg.eval.after)

    def _timed_evaluation(self, done: int) -> dict[str, float]:
        t0 = time.perf_counter()
        accuracy = self._evaluate()
        if done == self.cfg.run.iterations:
            self.accuracy_after = accuracy
        return {M.EVAL_ACCURACY: accuracy, M.EVAL_TIME: time.perf_counter() - t0}

    def _open_log(self, start: int) -> RunLog:
        run = self.cfg.run
        context = TrackerContext(self.parts.run_dir, run.name, start, config=dataclasses.asdict(self.cfg),
                                 project=run.project, mlflow_tracking_uri=run.mlflow_tracking_uri)
        return RunLog(self.parts.run_dir, run.iterations, start_iteration=start, progress=run.progress,
                      trackers=open_trackers(run.loggers, context), samples_per_iteration=run.log_samples)

    # ------------------------------------------------------------------ checkpoints and resume
    def _checkpoint_due(self, done: int) -> bool:
        every = self.cfg.run.checkpoint_every
        return done == self.cfg.run.iterations or (every > 0 and done % every == 0)

    def _checkpoint(self, done: int) -> None:
        """Snapshot the state here; a background thread writes it while the next iteration runs."""
        with self.timer.stage("checkpoint"):
            self.checkpoints.submit(done, {"stream": self.parts.stream.state_dict(),
                                           "rng": capture_rng(self.parts.backend), "iteration": done,
                                           "accuracy_before": self.accuracy_before})

    def _finish_checkpoint_write(self) -> None:
        """On a failing run: let the write in flight land (resume needs it); its own error must not hide the
        run's, so it is only reported."""
        try:
            self.checkpoints.wait()
        except CheckpointError as exc:
            log.error(str(exc))

    def _restore(self) -> int:
        """The trainer's state comes back through the checkpoints object; the run's own state here."""
        state = self.checkpoints.restore()
        if state is None:
            return 0
        self.parts.stream.load_state_dict(state["stream"])
        restore_rng(state["rng"], self.parts.backend)
        self.accuracy_before = state["accuracy_before"]
        print(f"resumed from {state['path']} (iteration {state['iteration']})")
        return state["iteration"]

    def _summary(self) -> dict:
        after = self.accuracy_after
        if after is None and self.cfg.eval.after:  # resumed after the last iteration: nothing measured it yet
            after = self._evaluate()
        summary = {"run": self.cfg.run.name, "iterations": self.cfg.run.iterations,
                   "heldout_size": len(self.parts.heldout), "accuracy_before": self.accuracy_before,
                   "accuracy_after": after, "policy_version": self.trainer.version,
                   "world_size": self.parts.world_size,
                   "startup_peak_memory_bytes": list(self.parts.startup_peak_bytes)}
        if after is not None and self.accuracy_before is not None:
            summary["accuracy_gain"] = after - self.accuracy_before
        return summary
