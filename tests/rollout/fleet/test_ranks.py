"""The colocated fleet of torchrun ranks, in one process: rank 0's engine and a follower's engine (in a thread,
over an in-memory stand-in for the control plane) deal one call's prompts dynamically, produce the groups one
engine produces alone, and refuse a follower of another version. The torchrun run itself is tested in
tests/parallel/test_spmd.py."""
from __future__ import annotations

import queue
import threading

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from engine import metrics as M
from engine.parallel.control import PeerTimeout
from engine.rollout.base import SamplingParams
from engine.rollout.fleet.process import WeightVersionError
from engine.rollout.fleet.ranks import RankFleet, serve_generate
from engine.rollout.native import NativeRolloutEngine
from engine.types import PromptItem

EOS, PAD, G = 1, 0, 2
PARAMS = SamplingParams(n=G, max_new_tokens=6, temperature=1.0, seed=7)
PROMPTS = [PromptItem(index=10 + i, prompt_ids=[5 + i, 6, 7 + 2 * i], reference="") for i in range(6)]


def engine(version: int = 0) -> NativeRolloutEngine:
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         initializer_range=0.1, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(0)  # every engine holds the same weights, as after a sync
    out = NativeRolloutEngine(Qwen2ForCausalLM(config).eval(), eos_token_id=EOS, pad_token_id=PAD,
                              device=torch.device("cpu"), max_batch_sequences=G)  # one prompt in flight
    out.version = version
    return out


class Wire:
    """Both ends of one rank-0 <-> rank-1 connection: ControlPlane's send / receive / poll."""

    def __init__(self) -> None:
        self.inbox = {0: queue.Queue(), 1: queue.Queue()}  # what rank r receives

    def end(self, me: int):
        wire = self

        class End:
            def send(self, rank: int, message) -> None:
                wire.inbox[rank].put(message)

            def receive(self, rank: int, doing: str, timeout_s: float | None = None):
                try:
                    return wire.inbox[me].get(timeout=timeout_s)
                except queue.Empty:
                    raise PeerTimeout(doing) from None

            def poll(self, rank: int):
                try:
                    return wire.inbox[me].get_nowait()
                except queue.Empty:
                    return None

        return End()


def follower(wire: Wire, rollout: NativeRolloutEngine) -> threading.Thread:
    """Rank 1's follow loop, reduced to the generate command."""
    control = wire.end(1)

    def loop() -> None:
        name, request = control.receive(0, "waiting for a command", 30.0)
        assert name == "generate"
        serve_generate(rollout, control, request, 30.0)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def by_prompt(groups) -> dict[int, list[list[int]]]:
    return {g.prompt.index: [c.token_ids for c in g.completions] for g in groups}


def test_two_ranks_deal_dynamically_and_sample_what_one_engine_samples():
    wire = Wire()
    thread = follower(wire, engine())
    fleet = RankFleet(engine(), wire.end(0), 2, in_flight=1, stall_timeout_s=30.0, peer_timeout_s=30.0)
    groups = list(fleet.generate(PROMPTS, PARAMS))
    thread.join(timeout=30.0)
    alone = list(engine().generate(PROMPTS, PARAMS))
    assert by_prompt(groups) == by_prompt(alone)  # per-prompt seeds: whichever rank drew a prompt
    assert all(g.version == 0 for g in groups)
    metrics = fleet.metrics()
    assert metrics[M.ROLLOUT_ENGINES] == 2.0
    # window 1 with 6 prompts: each engine was dealt more as its groups finished, and both generated
    assert metrics[M.ENGINE_BUSY_PREFIX + "rollout-0"] > 0 and metrics[M.ENGINE_BUSY_PREFIX + "rollout-1"] > 0
    assert {s.lane for s in fleet.pop_spans()} == {"rollout-0", "rollout-1"}


def test_a_call_smaller_than_the_rows_reaches_every_rank():
    wire = Wire()
    thread = follower(wire, engine())
    local = engine()
    local.max_batch_sequences = 64  # rows for all 6 prompts: only the fair share keeps rank 1 from idling
    fleet = RankFleet(local, wire.end(0), 2, in_flight=0, stall_timeout_s=30.0, peer_timeout_s=30.0)
    groups = list(fleet.generate(PROMPTS, PARAMS))
    thread.join(timeout=30.0)
    assert len(groups) == len(PROMPTS)
    assert fleet.metrics()[M.ENGINE_BUSY_PREFIX + "rollout-1"] > 0


def test_a_follower_holding_another_version_is_refused():
    wire = Wire()
    follower(wire, engine(version=3))
    fleet = RankFleet(engine(), wire.end(0), 2, in_flight=1, stall_timeout_s=30.0, peer_timeout_s=30.0)
    with pytest.raises(WeightVersionError, match="holds weights version 3"):
        list(fleet.generate(PROMPTS, PARAMS))
