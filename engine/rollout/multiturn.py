"""Multi-turn rollouts: the policy's turns alternate with an environment's observations (engine/envs).

    prompt | turn_1 ... </tool_call> | observation_1 | turn_2 ... <eos>
             sampled (trained)         appended (context)  sampled

Each of a prompt's G samples is a trajectory with its own `Environment`. All trajectories of a wave of prompts
decode in one batch with one KV cache (one row per trajectory). A turn ends at a stop id or a turn-end string
(`</tool_call>`); the environment's `step` then runs on a thread pool while the other rows keep decoding; its
observation is rendered with `observation_format`, tokenized once and fed into the same KV cache, so the
history is never prefilled again.

One forward feeds every row what it has: one sampled token, k observation tokens, or nothing while it waits.
Rows are right-padded to the widest feed with masked columns: the cache gets holes that no token attends to,
and positions count real tokens only, so every token sees exactly the context the trainer's packed forward
gives it (the rollout/trainer log-prob agreement covers multi-turn groups too).

Trajectories are kept as the ids that were sampled and appended, never decoded and re-encoded: the trainer
trains on exactly what the sampler produced. `Completion.sampled` marks the model's ids; the environment's
are context only (engine/trimodel.py drops them from every loss).

Randomness: one generator per trajectory, seeded from (seed, prompt index, sample), one uniform per sampled
token, so a trajectory's tokens do not depend on its batch nor on how long its neighbours' tools took.

Deviations from the single-turn native engine: prompts are admitted in waves (a wave's rows are freed when
they end, but new prompts start when the whole wave has ended), and `params.max_new_tokens` bounds each turn
while `EnvLimits.max_tokens` bounds the trajectory.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from engine.envs.base import EnvironmentFactory, EnvLimits
from engine.rollout.base import ListSource, PromptSource, SamplingParams
from engine.rollout.episode import EpisodeRecord, collect_observations, wait_for_an_environment
from engine.rollout.native import (NativeRolloutEngine, _generation_mode, _left_pad, _prompt_seed, _splitmix64,
                                   _weights_fingerprint)
from engine.rollout.sampling import check_sampling_params, sample_next
from engine.rollout.stopping import StopStrings
from engine.types import PromptItem, RolloutGroup

_COMPACT_DEAD_FRACTION = 0.25  # as in the native engine: dropping rows copies the cache, so not on every stop


@dataclass(frozen=True, slots=True)
class MultiTurnOptions:
    environment: EnvironmentFactory  # one Environment per trajectory, from its prompt
    encode: Callable[[str], list[int]]  # observation text -> ids (no special tokens added)
    decode: Callable[[list[int]], str]  # a turn's ids -> the text the environment reads
    limits: EnvLimits = EnvLimits()
    turn_end_strings: tuple[str, ...] = ("</tool_call>",)
    observation_format: str = "\n<tool_response>\n{text}\n</tool_response>\n"
    env_threads: int = 16


@dataclass(slots=True)
class _Trajectory(EpisodeRecord):
    """The shared record (engine/rollout/episode.py) plus this engine's way of feeding its KV-cache row."""

    generator: torch.Generator | None = None  # None when greedy
    tail: deque[int] | None = None  # newest tokens, for the turn-end strings
    feed: list[int] = field(default_factory=list)  # ids to put into the cache at the next forward
    turn_start: int = 0

    @property
    def decoding(self) -> bool:
        return not self.done and self.future is None

    def end(self, finished: bool) -> None:
        EpisodeRecord.end(self, finished)  # (no zero-argument super() in a slotted dataclass)
        self.feed = []

    def observe(self, obs_ids: list[int]) -> None:
        """An observation was appended: feed it after this turn's stop token (if not fed yet), open a turn."""
        self.feed = self.feed + obs_ids
        self.turn_start = len(self.ids)
        if self.tail is not None:
            self.tail.clear()


@dataclass(slots=True)
class _Wave:
    prompts: list[PromptItem]
    G: int
    trajectories: list[_Trajectory]  # s = b * G + k
    cache: DynamicCache
    logits_nV: torch.Tensor
    mask_nL: torch.Tensor
    pos_n: torch.Tensor
    row_s: list[int]  # the trajectory of each cache row
    stops: StopStrings | None  # the turn-end strings' matcher
    yielded: set[int] = field(default_factory=set)

    @property
    def running(self) -> bool:
        return len(self.yielded) < len(self.prompts)


class MultiTurnRolloutEngine:
    """A RolloutEngine whose samples are multi-turn trajectories; the weights live in a `NativeRolloutEngine`
    (`base`), which it drives with its own decode loop."""

    def __init__(self, base: NativeRolloutEngine, options: MultiTurnOptions) -> None:
        self.base = base
        self.options = options
        self._pool = ThreadPoolExecutor(max_workers=options.env_threads, thread_name_prefix="cadence-env")

    @property
    def version(self) -> int:
        return self.base.version

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        self.base.load_weights(named_tensors, version)

    @property
    def max_batch_sequences(self) -> int:
        return self.base.max_batch_sequences

    @property
    def steps(self) -> int:
        """Forwards taken, ever (a remote worker's heartbeat reports it as progress)."""
        return self.base.steps

    def metrics(self) -> dict[str, float]:
        # the episode metrics (env/time included) come from the groups' Episodes (engine/controller.py), so a
        # fleet of workers reports them the same way
        return self.base.metrics()

    def pop_spans(self):
        return self.base.pop_spans()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def generate(self, prompts: Sequence[PromptItem] | PromptSource, params: SamplingParams) -> Iterator[RolloutGroup]:
        check_sampling_params(params)
        source = prompts if hasattr(prompts, "take") else ListSource(list(prompts))
        return self._generate(source, params)

    def _generate(self, source: PromptSource, params: SamplingParams) -> Iterator[RolloutGroup]:
        version = self.base.version
        capacity = max(self.base.max_batch_sequences // params.n, 1)
        while (prompts := source.take(capacity, wait=True)) is not None:
            if prompts:
                yield from self._run_wave(prompts, params, version)

    def _run_wave(self, prompts: list[PromptItem], params: SamplingParams, version: int) -> Iterator[RolloutGroup]:
        model = self.base.model
        fingerprint = _weights_fingerprint(model)
        with self.base._busy("generate"), _generation_mode(model, fingerprint):
            wave = self._prefill(prompts, params)
        while wave.running:
            with self.base._busy("generate"), _generation_mode(model, fingerprint):
                done_b = self._until_a_group_ends(wave, params)
            for b in done_b:  # outside the mode: the consumer runs here
                yield self._group(wave, b, version)

    # ------------------------------------------------------------------ one wave
    def _prefill(self, prompts: list[PromptItem], params: SamplingParams) -> _Wave:
        G, device = params.n, self.base.device
        ids_kP, mask_kP = _left_pad([p.prompt_ids for p in prompts], self.base.pad_token_id, device)
        pos_kP = (mask_kP.cumsum(-1) - 1).clamp_min(0)
        out = self.base.model(input_ids=ids_kP, attention_mask=mask_kP, position_ids=pos_kP,
                              past_key_values=DynamicCache(config=self.base.model.config), use_cache=True,
                              logits_to_keep=1)
        out.past_key_values.batch_repeat_interleave(G)
        stops = StopStrings(self.options.turn_end_strings, self.options.decode) if self.options.turn_end_strings else None
        trajectories = [self._trajectory(p, k, params, stops) for p in prompts for k in range(G)]
        return _Wave(prompts, G, trajectories, out.past_key_values,
                     logits_nV=out.logits[:, -1].float().repeat_interleave(G, dim=0),
                     mask_nL=mask_kP.repeat_interleave(G, dim=0), pos_n=mask_kP.sum(-1).repeat_interleave(G),
                     row_s=list(range(len(trajectories))), stops=stops)

    def _trajectory(self, prompt: PromptItem, k: int, params: SamplingParams, stops: StopStrings | None) -> _Trajectory:
        generator = None
        if params.temperature > 0:
            seed = _splitmix64(_prompt_seed(params.seed, prompt.index) ^ k)
            generator = torch.Generator(device=self.base.device).manual_seed(seed)
        return _Trajectory(env=self.options.environment(prompt.text, prompt.reference), generator=generator,
                           tail=stops.new_tail() if stops else None)

    def _until_a_group_ends(self, wave: _Wave, params: SamplingParams) -> list[int]:
        stop_ids = {self.base.eos_token_id, *params.stop_token_ids}
        while True:
            self._sample(wave, params, stop_ids)
            self._collect_observations(wave)
            if any(t.feed for t in self._rows(wave)):
                self._forward(wave)
            else:
                self._wait_for_an_environment(wave)
            done_b = self._ended_groups(wave)
            if done_b:
                self._maybe_compact(wave)
                return done_b

    def _rows(self, wave: _Wave) -> list[_Trajectory]:
        return [wave.trajectories[s] for s in wave.row_s]

    def _sample(self, wave: _Wave, params: SamplingParams, stop_ids: set[int]) -> None:
        """One token for every row whose trajectory is generating a turn; turn ends go to the environment."""
        rows = [i for i, t in enumerate(self._rows(wave)) if t.decoding and not t.feed]
        if not rows:
            return
        trajectories = [wave.trajectories[wave.row_s[i]] for i in rows]
        u_N = None
        if params.temperature > 0:
            u_N = torch.stack([torch.rand((), generator=t.generator, device=self.base.device) for t in trajectories])
        tokens_N, logp_N = sample_next(wave.logits_nV[rows], params, u_N=u_N)
        for t, token, logp in zip(trajectories, tokens_N.tolist(), logp_N.tolist()):
            self._take_token(t, token, logp, params, token in stop_ids, wave.stops)

    def _take_token(self, t: _Trajectory, token: int, logp: float, params: SamplingParams, is_stop: bool,
                    stops: StopStrings | None) -> None:
        t.ids.append(token)
        t.logps.append(logp)
        t.sampled.append(True)
        t.feed = [token]
        if t.tail is not None:
            t.tail.append(token)
        ends_turn = is_stop or (stops is not None and stops.completes(t.tail))
        limits = self.options.limits
        if ends_turn:
            t.step_environment(self._pool, self.options.decode(t.ids[t.turn_start:]))
        elif len(t.ids) - t.turn_start >= params.max_new_tokens or len(t.ids) >= limits.max_tokens:
            t.end(finished=False)

    def _collect_observations(self, wave: _Wave) -> None:
        collect_observations(self._rows(wave), self.options, lambda t, obs_ids: t.observe(obs_ids))

    def _wait_for_an_environment(self, wave: _Wave) -> None:
        wait_for_an_environment(self._rows(wave), self.options.limits.step_timeout_s)

    def _forward(self, wave: _Wave) -> None:
        """Feed every row its pending ids in one forward; rows with fewer (or none) get masked columns."""
        rows = self._rows(wave)
        lengths = [len(t.feed) for t in rows]
        n, W, device = len(rows), max(lengths), self.base.device
        ids_nW = torch.full((n, W), self.base.pad_token_id, dtype=torch.long)
        mask_nW = torch.zeros((n, W), dtype=torch.long)
        for i, t in enumerate(rows):
            ids_nW[i, :lengths[i]] = torch.tensor(t.feed, dtype=torch.long)
            mask_nW[i, :lengths[i]] = 1
        ids_nW, mask_nW = ids_nW.to(device), mask_nW.to(device)
        lengths_n = torch.tensor(lengths, device=device)
        pos_nW = wave.pos_n[:, None] + torch.arange(W, device=device)[None, :]
        wave.mask_nL = torch.cat([wave.mask_nL, mask_nW], dim=1)
        out = self.base.model(input_ids=ids_nW, attention_mask=wave.mask_nL, position_ids=pos_nW,
                              past_key_values=wave.cache, use_cache=True)
        wave.cache = out.past_key_values
        self.base.steps += 1
        last_n = (lengths_n - 1).clamp_min(0)
        new_nV = out.logits[torch.arange(n, device=device), last_n].float()
        wave.logits_nV = torch.where((lengths_n > 0)[:, None], new_nV, wave.logits_nV)
        wave.pos_n = wave.pos_n + lengths_n
        for t in rows:
            t.feed = []

    def _ended_groups(self, wave: _Wave) -> list[int]:
        G = wave.G
        done_b = [b for b in range(len(wave.prompts)) if b not in wave.yielded
                  and all(t.done for t in wave.trajectories[b * G:(b + 1) * G])]
        wave.yielded.update(done_b)
        return done_b

    def _maybe_compact(self, wave: _Wave) -> None:
        """Drop the ended rows from the cache once they are a quarter of it, and the columns no row uses."""
        rows = self._rows(wave)
        dead = sum(t.done for t in rows)
        if dead == 0 or dead < _COMPACT_DEAD_FRACTION * len(rows):
            return
        keep = [i for i, t in enumerate(rows) if not t.done]
        if not keep:
            return
        keep_n = torch.tensor(keep, device=self.base.device)
        wave.cache.batch_select_indices(keep_n)
        wave.logits_nV, wave.mask_nL, wave.pos_n = wave.logits_nV[keep_n], wave.mask_nL[keep_n], wave.pos_n[keep_n]
        wave.row_s = [wave.row_s[i] for i in keep]
        used_L = wave.mask_nL.any(0)
        if not bool(used_L.all()):
            cols = torch.nonzero(used_L).squeeze(-1)
            wave.mask_nL = wave.mask_nL[:, cols]
            for layer in wave.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, cols], layer.values[:, :, cols]

    def _group(self, wave: _Wave, b: int, version: int) -> RolloutGroup:
        completions = [t.completion() for t in wave.trajectories[b * wave.G:(b + 1) * wave.G]]
        return RolloutGroup(prompt=wave.prompts[b], completions=completions, version=version)


def multiturn_engine(base: NativeRolloutEngine, env, tokenizer) -> MultiTurnRolloutEngine:
    """`base` driven over multi-turn trajectories as the recipe's `env:` section (EnvConfig) says."""
    return MultiTurnRolloutEngine(base, multiturn_options(env, tokenizer))


def multiturn_options(env, tokenizer) -> MultiTurnOptions:
    """The options of the recipe's `env:` section (EnvConfig), shared by the native and vLLM multi-turn engines:
    observations are tokenized by `tokenizer` without special tokens, turns decoded as stop strings are (special
    tokens kept)."""
    from engine.envs.registry import environment_factory
    from engine.rollout.stopping import token_decoder

    return MultiTurnOptions(
        environment=environment_factory(env), encode=lambda text: tokenizer.encode(text, add_special_tokens=False),
        decode=token_decoder(tokenizer), limits=env.limits(), turn_end_strings=tuple(env.turn_end),
        observation_format=env.observation_format, env_threads=env.threads)
