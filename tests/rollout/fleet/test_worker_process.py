"""One rollout worker process behind the fleet's RolloutEngine: same groups as in-process, versions checked on
both sides, a hung sync times out, a dead worker is restarted (pipeline.restart_rollout) and regenerates only
what was missing, with the version it was synced to."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig

from backends import get_backend
from engine.config import ModelConfig
from engine.models import load_causal_lm, load_tokenizer
from engine.rollout.fleet.transports import make_transport
from engine.rollout.fleet.fleet import Fleet, NoRolloutEngineLeft
from engine.rollout.fleet.process import WeightSyncTimeout, WeightVersionError
from engine.rollout.fleet.worker import WorkerSpec
from engine.rollout.base import SamplingParams
from engine.rollout.native import NativeRolloutEngine
from engine.rollout.stopping import StopStrings, stop_token_ids, token_decoder
from engine.trimodel import use_shared_prompt_attention
from engine.types import PromptItem

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def actor_and_tokenizer(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir))
    actor = load_causal_lm(tiny_model_dir, cfg, torch.device("cpu"))
    use_shared_prompt_attention(actor, "portable")
    with torch.no_grad():  # weights the worker can only have through a sync, not from the folder
        generator = torch.Generator().manual_seed(0)
        for p in actor.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return actor, load_tokenizer(tiny_model_dir, cfg)


@pytest.fixture(scope="module")
def engine(tiny_model_dir, actor_and_tokenizer):
    actor, tokenizer = actor_and_tokenizer
    # The spec names the run's compute dtype (build_rollout resolves model.dtype=auto before it gets here).
    spec = WorkerSpec(str(tiny_model_dir), ModelConfig(path=str(tiny_model_dir), dtype="float32"), "portable", "cpu",
                      1, tokenizer.eos_token_id, tokenizer.pad_token_id)
    engine = one_worker(spec, actor, sync_timeout_s=30.0)
    yield engine
    pid = engine.pids[0]
    engine.close()
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped: no zombie left behind


def one_worker(spec: WorkerSpec, actor, **options) -> Fleet:
    options = {"window": 64, "stall_timeout_s": 300.0, **options}
    return Fleet([spec], make_transport(get_backend("cpu"), torch.device("cpu")), actor.named_parameters(), **options)


def prompts(tokenizer, n: int) -> list[PromptItem]:
    return [PromptItem(100 + i, tokenizer.encode(f"Question: Tom has {i} apples and buys {i + 3}. How many?\n"
                                                 "Answer:"), str(2 * i + 3)) for i in range(n)]


def tokens(groups) -> dict[int, list[list[int]]]:
    return {g.prompt.index: [c.token_ids for c in g.completions] for g in groups}


def test_the_worker_generates_what_the_in_process_engine_does(engine, actor_and_tokenizer):
    actor, tokenizer = actor_and_tokenizer
    engine.load_weights(actor.named_parameters(), version=3)
    params = SamplingParams(n=4, max_new_tokens=16, seed=7)
    remote = list(engine.generate(prompts(tokenizer, 5), params))
    assert engine.version == 3 and all(g.version == 3 for g in remote)
    local = NativeRolloutEngine(actor, tokenizer.eos_token_id, tokenizer.pad_token_id, torch.device("cpu"))
    expected = list(local.generate(prompts(tokenizer, 5), params))
    assert tokens(remote) == tokens(expected)
    logp = {g.prompt.index: [c.logprobs for c in g.completions] for g in expected}
    for group in remote:  # another process: the same kernels, but float round-off may differ in the last bit
        for got, want in zip([c.logprobs for c in group.completions], logp[group.prompt.index]):
            assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5)
    stages = {s.stage for s in engine.pop_spans()}
    assert stages == {"load_weights", "generate"}


def test_the_worker_stops_at_generation_config_ids_and_stop_strings(engine, actor_and_tokenizer):
    """Stop ids from a generation_config list and stop strings end the worker's samples where they end the
    in-process engine's: each sample is its free-running twin cut at the first stop."""
    actor, tokenizer = actor_and_tokenizer
    engine.load_weights(actor.named_parameters(), version=2)
    decode = token_decoder(tokenizer)
    local = NativeRolloutEngine(actor, tokenizer.eos_token_id, tokenizer.pad_token_id, torch.device("cpu"),
                                decode=decode)
    base = SamplingParams(n=3, max_new_tokens=16, seed=11)
    free = {g.prompt.index: g.completions for g in local.generate(prompts(tokenizer, 4), base)}
    first, second, third = free[100][0].token_ids, free[101][1].token_ids, free[103][0].token_ids
    ids = stop_token_ids(tokenizer, GenerationConfig(eos_token_id=[tokenizer.eos_token_id, first[5], third[6]]))
    text = decode(second)  # random bytes, mostly not UTF-8: two whole characters of it
    strings = (next(text[i:i + 2] for i in range(len(text) - 1) if "\ufffd" not in text[i:i + 2]),)
    params = SamplingParams(n=3, max_new_tokens=16, seed=11, stop_token_ids=ids, stop_strings=strings)
    remote = list(engine.generate(prompts(tokenizer, 4), params))
    assert tokens(remote) == tokens(local.generate(prompts(tokenizer, 4), params))
    matcher, cut_by = StopStrings(strings, decode), []
    for group in remote:
        for got, want in zip(group.completions, free[group.prompt.index]):
            at_id = next((i for i, t in enumerate(want.token_ids) if t in ids), len(want.token_ids))
            at_string = matcher.first_stop(want.token_ids)
            at_string = len(want.token_ids) if at_string is None else at_string
            stop = min(at_id, at_string)
            assert got.token_ids == want.token_ids[:stop + 1]
            assert got.finished == (stop < len(want.token_ids) or want.finished)
            cut_by.append("id" if at_id < at_string else "string" if at_string < at_id else "")
    assert {"id", "string"} <= set(cut_by)


def test_a_generate_for_a_version_the_worker_does_not_hold_is_refused(engine, actor_and_tokenizer):
    actor, tokenizer = actor_and_tokenizer
    engine.load_weights(actor.named_parameters(), version=4)
    engine.version = 5  # the trainer side believes in a version the worker never acknowledged
    try:
        with pytest.raises(WeightVersionError, match="holds weights version 4, the request is for version 5"):
            list(engine.generate(prompts(tokenizer, 1), SamplingParams(n=2, max_new_tokens=4)))
    finally:
        engine.version = 4
    assert len(list(engine.generate(prompts(tokenizer, 1), SamplingParams(n=2, max_new_tokens=4)))) == 1


def test_a_dead_worker_is_restarted_once_and_regenerates_only_the_missing_prompts(engine, actor_and_tokenizer):
    actor, tokenizer = actor_and_tokenizer
    params = SamplingParams(n=2, max_new_tokens=120, seed=3)  # long and varied: groups finish far apart
    engine.load_weights(actor.named_parameters(), version=6)
    expected = tokens(engine.generate(prompts(tokenizer, 8), params))
    engine.restart = True
    engine.load_weights(actor.named_parameters(), version=7)  # a new version grants one restart
    stream = engine.generate(prompts(tokenizer, 8), params)
    first = next(stream)
    os.kill(engine.pids[0], signal.SIGKILL)
    rest = list(stream)
    assert engine.members[0].restarts == 1 and engine.version == 7
    assert tokens([first, *rest]) == expected and all(g.version == 7 for g in rest)
    engine.restart = False


def test_a_restarted_worker_gets_the_synced_version_not_weights_stepped_since(engine, actor_and_tokenizer):
    """With PPO mini-batches the trainer steps while the rollout still streams; a worker that dies then must be
    restarted with the version it was synced to, which the trainer's live tensors no longer hold."""
    actor, tokenizer = actor_and_tokenizer
    params = SamplingParams(n=2, max_new_tokens=120, seed=5)
    engine.load_weights(actor.named_parameters(), version=10)
    expected = tokens(engine.generate(prompts(tokenizer, 8), params))
    engine.restart = True
    engine.load_weights(actor.named_parameters(), version=11)
    stream = engine.generate(prompts(tokenizer, 8), params)
    first = next(stream)
    saved = [p.detach().clone() for p in actor.parameters()]
    try:
        with torch.no_grad():  # a mini-batch step of the float32 masters the sync published
            for p in actor.parameters():
                p.add_(0.05 * torch.randn_like(p))
        os.kill(engine.pids[0], signal.SIGKILL)
        rest = list(stream)
    finally:
        with torch.no_grad():
            for p, value in zip(actor.parameters(), saved):
                p.copy_(value)
        engine.restart = False
    assert engine.members[0].restarts >= 1 and tokens([first, *rest]) == {k: v for k, v in expected.items()}


def test_a_sync_the_worker_does_not_acknowledge_in_time_raises(engine, actor_and_tokenizer):
    actor, _ = actor_and_tokenizer
    engine.sync_timeout_s = 1.0
    pid = engine.pids[0]
    os.kill(pid, signal.SIGSTOP)  # alive but hung
    start = time.perf_counter()
    try:
        with pytest.raises(WeightSyncTimeout, match=r"did not acknowledge weights version 8 within "
                                                    r"pipeline.sync_timeout_s=1s"):
            engine.load_weights(actor.named_parameters(), version=8)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert time.perf_counter() - start < 5.0
    with pytest.raises(NoRolloutEngineLeft, match="no rollout worker acknowledged weights version 9"):
        engine.load_weights(actor.named_parameters(), version=9)  # the hung one was dropped


def test_a_worker_that_stops_making_progress_mid_generate_is_reported_within_the_stall_timeout(
        tiny_model_dir, actor_and_tokenizer):
    actor, tokenizer = actor_and_tokenizer
    spec = WorkerSpec(str(tiny_model_dir), ModelConfig(path=str(tiny_model_dir), dtype="float32"), "portable", "cpu",
                      1, tokenizer.eos_token_id, tokenizer.pad_token_id)
    engine = one_worker(spec, actor, sync_timeout_s=30.0, stall_timeout_s=3.0)
    pid = engine.pids[0]
    try:
        engine.load_weights(actor.named_parameters(), version=1)
        stream = engine.generate(prompts(tokenizer, 8), SamplingParams(n=2, max_new_tokens=120, seed=3))
        next(stream)
        os.kill(pid, signal.SIGSTOP)  # alive, silent: no heartbeat, no progress
        start = time.perf_counter()
        with pytest.raises(NoRolloutEngineLeft, match=r"made no progress for 3 s \(rollout.stall_timeout_s\)"):
            list(stream)
        assert time.perf_counter() - start < 10.0
    finally:
        os.kill(pid, signal.SIGCONT)
        engine.close()
