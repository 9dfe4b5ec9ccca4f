"""Metric names (the only place they are spelled) and the per-iteration stage timer.

Every metric the engine logs is a constant here, so a dashboard, a test or a plot that reads
`metrics.jsonl` imports the name instead of retyping a string. Names are `<group>/<what>`, which
TensorBoard shows as one panel group per prefix.

Stage times are `time/<stage>` seconds within one iteration (see `stage_time` and `StageTimer`).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

# -------------------------------------------------------------------------------------------- bookkeeping
ITERATION = "iteration"  # 1-based: the number of optimizer updates done when the line is written
POLICY_VERSION = "policy/version"  # version of the weights that produced this iteration's rollouts

# ------------------------------------------------------------------------------------------------ reward
REWARD_MEAN = "reward/mean"
REWARD_STD = "reward/std"
ACCURACY = "reward/accuracy"  # fraction of samples whose extracted answer is correct
NO_ANSWER_FRAC = "reward/no_answer_frac"  # fraction of samples where no answer could be extracted
ZERO_STD_FRAC = "reward/zero_std_frac"  # fraction of groups whose G rewards are all equal (no signal)
REWARD_TIMEOUTS = "reward/timeouts"  # reward-function calls past reward.timeout_s this iteration (scored 0)
REWARD_CRASHES = "reward/crashes"  # reward-function calls that killed their worker this iteration (scored 0)

# ------------------------------------------------------------------------------------------------ policy
LOSS = "policy/loss"
KL = "policy/kl"
ENTROPY = "policy/entropy"
CLIP_FRAC = "policy/clip_frac"
# max |trainer log-prob - sampler log-prob| over the batch's tokens: ~0 when rollout and trainer agree
LOGPROB_DIFF_MAX = "policy/logprob_diff_max"

# ----------------------------------------------------------------------------------------------- rollout
RESPONSE_LEN = "rollout/response_len_mean"
RESPONSE_LEN_MAX = "rollout/response_len_max"
# share of responses cut by max_new_tokens (Completion.finished False): no stop id or stop string was met
# reward/*, rollout/response_len_* and rollout/truncated_frac describe every group generated in the iteration,
# also those dynamic sampling drops; these count the two kinds
DROPPED_GROUPS = "rollout/dropped_groups"  # dynamic sampling: groups with all-equal rewards left out
KEPT_GROUPS = "rollout/kept_groups"  # groups trained on
SAMPLING_ROUNDS = "rollout/sampling_rounds"  # dynamic sampling: generation rounds this iteration
TRUNCATED_FRAC = "rollout/truncated_frac"
ROLLOUT_ENGINES = "rollout/engines"  # rollout engines that generated this iteration (a fleet's live workers)
REDISPATCHED_PROMPTS = "rollout/redispatched_prompts"  # prompts of an engine that died, dealt to the others
JOINED_ENGINES = "rollout/joined_engines"  # engines that joined the fleet at this iteration's weight sync
ENGINE_BUSY_PREFIX = "rollout/busy_s/"  # + lane ("rollout-<id>"): seconds that engine spent generating
# multi-turn rollouts (engine/rollout/multiturn.py): logged only when the samples are trajectories
TURNS_PER_SAMPLE = "rollout/turns_per_sample"
TOOL_CALLS_PER_SAMPLE = "rollout/tool_calls_per_sample"
TOOL_ERRORS = "rollout/tool_errors"  # failed tool calls this iteration (malformed, unknown, raised, timed out)
ENV_TIME = "env/time"  # seconds environment steps took this iteration, summed over trajectories

# ------------------------------------------------------------------------------------------------- optim
GRAD_NORM = "optim/grad_norm"  # global norm before clipping
LR = "optim/lr"
OPTIMIZER_STEPS = "optim/steps"  # optimizer steps this iteration (algorithm.ppo_mini_batches * ppo_epochs)
LOSS_SCALE = "optim/loss_scale"  # float16 only: the dynamic loss scale after the step
# float16 only: overflowed attempts at this iteration's steps; each halved the scale and replayed the mini-batch
SKIPPED_STEPS = "optim/skipped_steps"

# -------------------------------------------------------------------------------------------------- perf
WORLD_SIZE = "dist/world_size"  # trainer ranks (torchrun processes); 1 for a plain run
TOKENS_PER_S = "perf/tokens_per_s"
SAMPLES_PER_S = "perf/samples_per_s"
PEAK_MEMORY_BYTES = "perf/peak_memory_bytes"
# the largest of the ranks' peak memory once their models were built (each rank's is in summary.json)
STARTUP_PEAK_BYTES = "perf/startup_peak_memory_bytes"

# ---------------------------------------------------------------------------------------------- pipeline
# Per iteration, over its wall-clock window W (docs/pipeline.md has the exact definitions). Generation busy =
# the rollout engine computing; trainer busy = the stages prompts, score, train and step; idle = W - busy.
GEN_BUSY_S = "pipeline/gen_busy_s"
GEN_IDLE_S = "pipeline/gen_idle_s"
TRAIN_BUSY_S = "pipeline/train_busy_s"
TRAIN_IDLE_S = "pipeline/train_idle_s"
SYNC_S = "pipeline/sync_s"  # the weight-sync barrier: publish, worker load, ack
# bytes of the weights handed to the rollout side by the iteration's sync: the whole model, or under LoRA
# the adapters alone (a colocated engine sharing the actor's storage copies none of them)
SYNC_BYTES = "sync/bytes"
# |generation busy AND trainer busy| / min(|generation busy|, |trainer busy|): the share of the shorter
# phase hidden behind the longer one; 0 for the sync schedule, 1 for a perfect pipeline.
OVERLAP_FRAC = "pipeline/overlap_frac"

# -------------------------------------------------------------------------------------------------- eval
# held-out accuracy, greedy decoding: iteration 0's line (eval.before), every eval.every iterations, the last one
# (eval.after)
EVAL_ACCURACY = "eval/accuracy"

_TIME_PREFIX = "time/"
ITERATION_TIME = _TIME_PREFIX + "iteration"  # wall-clock seconds of the whole iteration
EVAL_TIME = _TIME_PREFIX + "eval"  # seconds of the held-out evaluation on this iteration's line (not in time/iteration)


def stage_time(stage: str) -> str:
    """Metric name of the seconds spent in `stage` during one iteration, e.g. `time/rollout`."""
    if not stage or "/" in stage:
        raise ValueError(f"stage name must be non-empty and contain no '/', got {stage!r}")
    return _TIME_PREFIX + stage


class Span(NamedTuple):
    """One timed interval for a timeline plot: seconds relative to the timer's creation."""

    lane: str  # who did the work, e.g. "trainer", "rollout-0"
    stage: str
    start_s: float
    end_s: float


ENGINE_SPAN_MERGE_GAP_S = 1e-3  # busy intervals closer than this are one span (the worker's send between groups)


def append_engine_span(spans, stage: str, start: float, end: float) -> None:
    """Record a rollout engine's busy interval (lane "rollout"), extending the previous span of the same stage
    when the gap between them is below ENGINE_SPAN_MERGE_GAP_S."""
    last = spans[-1] if spans else None
    if last is not None and last.stage == stage and start - last.end_s < ENGINE_SPAN_MERGE_GAP_S:
        spans[-1] = last._replace(end_s=end)
    else:
        spans.append(Span("rollout", stage, start, end))


class StageTimer:
    """Accumulates wall-clock seconds per named stage within one iteration.

    `synchronize` (the backend's) is called when a stage starts and when it ends: device work is queued
    asynchronously, so without it a stage would be charged for the previous stage's kernels and undercount
    its own. A stage entered several times in one iteration accumulates. With `keep_spans=True` every
    stage interval is also kept as a `Span` (for `engine.plots.plot_timeline`) until `pop_spans()`.
    """

    def __init__(
        self,
        synchronize: Callable[[], None] | None = None,
        lane: str = "main",
        keep_spans: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._synchronize = synchronize
        self._lane = lane
        self._keep_spans = keep_spans
        self._clock = clock
        self._origin = clock()
        self._seconds: dict[str, float] = {}
        self._spans: list[Span] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the body as stage `name`; the time counts even when the body raises."""
        key = stage_time(name)
        self._sync()
        start = self._clock()
        try:
            yield
        finally:
            self._sync()
            end = self._clock()
            self._seconds[key] = self._seconds.get(key, 0.0) + (end - start)
            if self._keep_spans:
                self._spans.append(Span(self._lane, name, start - self._origin, end - self._origin))

    @property
    def origin(self) -> float:
        """The clock value spans are measured from (the clock's reading when the timer was created)."""
        return self._origin

    def pop(self) -> dict[str, float]:
        """Return `{time/<stage>: seconds}` accumulated since the last pop, and start over."""
        out, self._seconds = self._seconds, {}
        return out

    def pop_spans(self) -> list[Span]:
        """Return the spans kept since the last call (empty unless `keep_spans=True`), and start over."""
        out, self._spans = self._spans, []
        return out

    def _sync(self) -> None:
        if self._synchronize is not None:
            self._synchronize()
