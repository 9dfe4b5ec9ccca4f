"""The rollout worker: a spawned process with its own model copy and CPU threads, serving one request at a time.

    start: set threads, load the model (and, for stop strings, the tokenizer) from the model folder, open the
           weight receiver, send Ready
    beat:  a thread sends Alive(decode steps so far) every HEARTBEAT_S, so the trainer tells a slow worker from a
           stalled one (its steps stop advancing) or a stopped one (nothing arrives)
    loop:  LoadWeights(k) -> copy the transport's buffers into the model, ack WeightsLoaded(k)
           Generate(k)    -> refuse unless the model holds version k; else generate its prompts, admitting
                             those of later Prompts messages as rows free up (continuous batching), stream
                             GroupReady per finished group, and after EndPrompts and the last group send
                             GenerateDone. Stop ids and stop strings come in the request's SamplingParams
           Shutdown or the trainer gone (EOF on the pipe) -> exit

SIGINT is ignored: Ctrl-C reaches every process of the terminal's group, and the trainer, not the worker,
decides how to stop (it shuts the worker down in its `finally`).
"""
from __future__ import annotations

import os
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from engine.rollout.fleet.transports import WeightReceiver
from engine.config import EnvConfig, ModelConfig
from engine.rollout.fleet.messages import (Alive, EndPrompts, Failed, Generate, GenerateDone, GroupReady, LoadWeights,
                                           Prompts, Ready, Refused, Shutdown, WeightsLoaded)
from engine.rollout.native import NativeRolloutEngine
from engine.rollout.stopping import token_decoder


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything the worker needs to build its engine; picklable."""

    model_dir: str  # the Hugging Face folder the actor was loaded from
    model: ModelConfig
    attention_kernel: str | None  # the actor's shared-prompt kernel (None: the model's own attention)
    device: str
    threads: int
    eos_token_id: int
    pad_token_id: int
    max_batch_sequences: int = 256
    env: EnvConfig | None = None  # multi-turn rollouts: the recipe's env section (resolved in the worker)


HEARTBEAT_S = 2.0


class Replies:
    """The reply pipe, shared by the serving loop and the heartbeat thread: one send at a time."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: object) -> None:
        with self._lock:
            self.conn.send(message)


def worker_main(spec: WorkerSpec, receiver: WeightReceiver, requests: Connection, conn: Connection) -> None:
    """Entry point of the spawned rollout process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(spec.threads)
    replies = Replies(conn)
    try:
        engine = build_engine(spec)
        receiver.open()
        replies.send(Ready(os.getpid()))
        threading.Thread(target=_beat, args=(engine, replies), name="cadence-rollout-beat", daemon=True).start()
        serve(engine, receiver, requests, replies)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the trainer is gone: nobody is left to tell
    except BaseException:
        replies.send(Failed("startup", traceback.format_exc()))
        raise
    finally:
        receiver.close()


def _beat(engine: NativeRolloutEngine, replies: Replies) -> None:
    while True:
        try:
            replies.send(Alive(engine.steps))
        except (BrokenPipeError, ConnectionResetError, OSError):
            return  # the trainer is gone; the serving loop sees it too
        threading.Event().wait(HEARTBEAT_S)


def build_engine(spec: WorkerSpec) -> NativeRolloutEngine:
    from engine.models import load_causal_lm, load_tokenizer
    from engine.trimodel import use_shared_prompt_attention

    from engine.precision import DTYPES

    # spec.model.dtype is the run's compute dtype: the rollout side holds compute-dtype weights only
    model = load_causal_lm(Path(spec.model_dir), spec.model, torch.device(spec.device), dtype=DTYPES[spec.model.dtype])
    if spec.model.lora.enabled:  # the same adapters as the actor's (compute dtype): the syncs carry them alone
        from engine.lora import apply_lora

        model = apply_lora(model, spec.model.lora, Path(spec.model_dir), DTYPES[spec.model.dtype])
    if spec.attention_kernel is not None:  # the same attention code as the actor: same logits, same samples
        use_shared_prompt_attention(model, spec.attention_kernel)
    model.requires_grad_(False)
    # The actor's folder holds its tokenizer: stop strings are matched on the same text as in the trainer.
    tokenizer = load_tokenizer(Path(spec.model_dir), spec.model)
    engine = NativeRolloutEngine(model, eos_token_id=spec.eos_token_id, pad_token_id=spec.pad_token_id,
                                 device=torch.device(spec.device), max_batch_sequences=spec.max_batch_sequences,
                                 decode=token_decoder(tokenizer))
    if spec.env is None:
        return engine
    from engine.rollout.multiturn import multiturn_engine

    return multiturn_engine(engine, spec.env, tokenizer)


def serve(engine: NativeRolloutEngine, receiver: WeightReceiver, requests: Connection, replies: Replies) -> None:
    """Answer requests until Shutdown. An exception in one request is reported and the worker goes on."""
    while True:
        message = requests.recv()
        if isinstance(message, Shutdown):
            return
        try:
            if isinstance(message, LoadWeights):
                engine.load_weights(receiver.receive(), message.version)
                replies.send(WeightsLoaded(message.version, engine.pop_spans()))
            elif isinstance(message, Generate):
                _generate(engine, message, requests, replies)
            else:
                raise TypeError(f"unexpected message {type(message).__name__}")
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception:
            replies.send(Failed(type(message).__name__, traceback.format_exc()))


def _generate(engine: NativeRolloutEngine, request: Generate, requests: Connection, replies: Replies) -> None:
    if request.version != engine.version:
        replies.send(Refused(request.request_id, f"the worker holds weights version {engine.version}, "
                                                 f"the request is for version {request.version}"))
        return
    source = RequestSource(request, pipe_receiver(requests))
    for group in engine.generate(source, request.params):
        replies.send(GroupReady(request.request_id, group))
    replies.send(GenerateDone(request.request_id, engine.pop_spans()))
    if source.shutdown:
        raise EOFError  # the trainer asked to stop mid-request: leave the serving loop


class RequestSource:
    """The prompts of one request: its first ones, then those of Prompts messages until EndPrompts (the
    engine's PromptSource). `receive(block)` returns the next message of the request's channel, or None when
    none has arrived and `block` is False: the worker's request pipe (`pipe_receiver`), or a torchrun rank's
    control plane (engine/rollout/fleet/ranks.py)."""

    def __init__(self, request: Generate, receive: Callable[[bool], object | None]) -> None:
        self.request_id = request.request_id
        self.receive = receive
        self.waiting = list(request.prompts)
        self.ended = False
        self.shutdown = False

    def take(self, k: int, wait: bool) -> list | None:
        self._read(block=wait and not self.waiting)
        if not self.waiting:
            return None if self.ended else []
        out, self.waiting = self.waiting[:k], self.waiting[k:]
        return out

    def _read(self, block: bool) -> None:
        """Every message already received (and, with `block`, the next one while none has arrived)."""
        while not self.ended:
            message = self.receive(block)
            if message is None:
                return
            block = False
            if isinstance(message, Prompts) and message.request_id == self.request_id:
                self.waiting.extend(message.prompts)
            elif isinstance(message, EndPrompts) and message.request_id == self.request_id:
                self.ended = True
            elif isinstance(message, Shutdown):
                self.ended = self.shutdown = True
                self.waiting = []
            elif not isinstance(message, (Prompts, EndPrompts)):  # another request's tail is dropped
                raise TypeError(f"unexpected {type(message).__name__} during generate request {self.request_id}")


def pipe_receiver(conn: Connection) -> Callable[[bool], object | None]:
    """RequestSource's `receive` over a pipe: the next message, or None when none is there and not `block`."""
    return lambda block: conn.recv() if block or conn.poll(0) else None
