"""Rollout through running vLLM servers addressed by URL (`rollout.servers: [http://host:8000, ...]`).

    controller ── deal ──► server a: POST /v1/completions (prompt ids, n = G, seed)  ─► group
               └─ deal ──► server b: ...
    sync:  vLLM's own RL weight-transfer API: /init_weight_transfer_engine once, then per version the trainer
           engine's send_weights (/start_weight_update, /update_weights with the NCCL broadcast beside it,
           /finish_weight_update) and /update_weight_version; /weight_info must then read our version

No wire protocol of our own: generation is vLLM's OpenAI-compatible completions API with token-id prompts and
`return_token_ids`, so the trained ids are the sampled ids; weights go through vLLM's trainer-side
`NCCLTrainerWeightTransferEngine` (imported lazily from vllm, in the trainer's environment).

Each server has `window` requests in flight (one prompt each, n = G); dealing is the fleet's dynamic dealer.
A server that fails a request (connection refused, HTTP error, no answer within `request_timeout_s`) is
dropped for the rest of the run: its unfinished prompts are dealt to the others with the same per-prompt
seeds, and `rollout/redispatched_prompts` counts them. With no server left the run stops with one line.

Elastic (`rollout.servers_file`): the file of URLs is read again before every weight sync. A URL new to the
fleet (or one dropped earlier and listed again, say after a restart) joins: it gets that sync's weights like
the others, so it is on the current version before it is dealt a prompt. A URL no longer listed leaves.
`rollout/joined_engines` counts the joins; fleet.json lists every server the run has had.

On-policy: a server is dealt prompts only when its `/weight_info` reads the version the trainer last sent,
so a server that missed an update is never used silently. The servers must run with
`--logprobs-mode processed_logprobs` (log-probs after temperature, as the trainer's); the controller's
`policy/logprob_diff_max` check warns otherwise.
"""
from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import metrics as M
from engine.rollout.base import SamplingParams
from engine.rollout.fleet.dealer import Dealer
from engine.rollout.fleet.roster import write_fleet_file
from engine.rollout.sampling import check_sampling_params
from engine.timeline import engine_busy
from engine.types import Completion, PromptItem, RolloutGroup

_SEED_BITS = (1 << 63) - 1
_POLL_S = 1.0  # how often a waiting stream checks that some request slot still serves it


class ServerError(RuntimeError):
    """A server did not answer a request as vLLM's API says it should."""


class NoServerLeft(RuntimeError):
    pass


@dataclass(eq=False, slots=True)  # hashed by identity: a server that rejoins gets a new client (and transfer group)
class ServerClient:
    """One vLLM server's HTTP API: the completions route and the weight routes this engine reads."""

    url: str
    timeout_s: float = 300.0

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(f"{self.url.rstrip('/')}/{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        return self._send(request)

    def get(self, path: str) -> dict:
        return self._send(urllib.request.Request(f"{self.url.rstrip('/')}/{path}", method="GET"))

    def _send(self, request: urllib.request.Request) -> dict:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"{}")
        except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
            raise ServerError(f"{request.get_method()} {request.full_url}: {exc}") from exc

    def weight_version(self) -> str | None:
        return self.get("weight_info").get("weight_version")

    def complete(self, prompt: PromptItem, params: SamplingParams, eos_token_id: int) -> list[Completion]:
        """The G completions of `prompt`, in sample order."""
        out = self.post("v1/completions", completion_request(prompt, params, eos_token_id))
        return parse_choices(out, params.n)


def completion_request(prompt: PromptItem, params: SamplingParams, eos_token_id: int) -> dict:
    """vLLM's /v1/completions body for one prompt's G samples: seeded per prompt like the other engines
    (child j of the request draws with seed + j), the sampled token's log-prob, the ids as sampled."""
    from engine.rollout.native import _prompt_seed

    greedy = params.temperature == 0
    return {"prompt": list(prompt.prompt_ids), "n": 1 if greedy else params.n, "max_tokens": params.max_new_tokens,
            "temperature": params.temperature, "top_p": 1.0 if greedy else params.top_p,
            "top_k": 0 if greedy else params.top_k,
            "seed": None if greedy else _prompt_seed(params.seed, prompt.index) & _SEED_BITS,
            "stop_token_ids": [] if params.ignore_eos else sorted({eos_token_id, *params.stop_token_ids}),
            "ignore_eos": params.ignore_eos, "stop": list(params.stop_strings), "include_stop_str_in_output": True,
            "logprobs": 0, "return_token_ids": True, "skip_special_tokens": False, "add_special_tokens": False}


def parse_choices(response: dict, group_size: int) -> list[Completion]:
    """Completions from a /v1/completions answer: ids from `token_ids`, log-probs from `token_logprobs`,
    finished when vLLM's finish_reason is "stop". A greedy answer (n = 1) is repeated G times."""
    completions = []
    for choice in sorted(response.get("choices", []), key=lambda c: c["index"]):
        ids, logps = choice.get("token_ids"), (choice.get("logprobs") or {}).get("token_logprobs")
        if ids is None or logps is None or len(ids) != len(logps):
            raise ServerError("a completion choice lacks token_ids or logprobs.token_logprobs of the same length "
                              "(is the server vLLM >= 0.32, and was the request sent with logprobs=0?)")
        completions.append(Completion(list(ids), [float(x) for x in logps], choice.get("finish_reason") == "stop"))
    if len(completions) == 1 < group_size:
        only = completions[0]
        completions = [Completion(list(only.token_ids), list(only.logprobs), only.finished) for _ in range(group_size)]
    if len(completions) != group_size:
        raise ServerError(f"expected {group_size} choices, got {len(completions)}")
    return completions


@dataclass(eq=False, slots=True)
class _Call:
    dealer: Dealer
    params: SamplingParams
    expected: int  # groups the call yields
    out: queue.Queue = field(default_factory=queue.Queue)  # groups, and None when a server was dropped
    over: bool = False  # every group arrived, or the consumer stopped reading
    slots: list[threading.Thread] = field(default_factory=list)  # the request slots serving the call


@dataclass(eq=False, slots=True)
class _Server:
    id: int
    client: ServerClient
    alive: bool = True
    version: int = 0  # the last version sent to it (the model folder's, 0, before any transfer)
    lost: str = ""
    spans: list[M.Span] = field(default_factory=list)

    @property
    def lane(self) -> str:
        return f"rollout-{self.id}"


def read_servers_file(path: Path) -> list[str]:
    """The URLs of a rollout.servers_file: one per line; blank lines and # comments skipped; duplicates once."""
    from engine.config import is_server_url

    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise FileNotFoundError(f"rollout.servers_file: cannot read {path}: {exc.strerror or exc}") from None
    urls = []
    for number, line in enumerate(lines, 1):
        url = line.split("#", 1)[0].strip()
        if url and not is_server_url(url):
            raise ValueError(f"rollout.servers_file: {path} line {number}: expected an http(s)://host:port URL, "
                             f"got {url!r}")
        if url and url not in urls:
            urls.append(url)
    return urls


class ServerFleet:
    """A RolloutEngine over vLLM servers. `transfer(client, named_tensors, version)` moves the weights (one call
    per server); without it the fleet can generate only with the servers' loaded weights (version 0).
    `servers_file` (instead of `urls`): the membership is that file's, read again at every load_weights."""

    def __init__(self, urls: Sequence[str], eos_token_id: int, *, window: int, request_timeout_s: float,
                 transfer=None, fleet_file: Path | None = None, servers_file: Path | None = None) -> None:
        self.servers: list[_Server] = []
        self.eos_token_id, self.window, self.transfer = eos_token_id, window, transfer
        self.request_timeout_s, self.servers_file, self.fleet_file = request_timeout_s, servers_file, fleet_file
        self.version = 0
        self._redispatched = self._joined = 0
        self._lock = threading.Lock()  # the counters and drops, from request threads
        self._t0 = time.perf_counter()
        for url in read_servers_file(servers_file) if servers_file else urls:
            self._add(url)  # the first members start the run: not counted as joins
        if not self.servers:
            raise NoServerLeft(f"rollout.servers_file: {servers_file} lists no server")

    # ------------------------------------------------------------------ RolloutEngine
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        if self.servers_file is not None:
            self._follow_servers_file()
        if self.transfer is None:
            if version != self.version:
                raise NoServerLeft(f"rollout.servers: weights version {version} cannot reach the servers: no weight "
                                   "transfer is set up (rollout.server_sync)")
            return
        tensors = list(named_tensors)
        for server in self._live():
            try:
                self.transfer(server.client, tensors, version)
            except Exception as exc:  # a server that cannot take the new weights must not generate with old ones
                self._drop(server, f"weight update to version {version} failed: {exc}")
                continue
            server.version = version
        self.version = version
        self._write_fleet_file()

    def generate(self, prompts: Sequence[PromptItem], params: SamplingParams) -> Iterator[RolloutGroup]:
        check_sampling_params(params)
        for server in self._live():
            self._check_version(server)
        call = _Call(Dealer(list(prompts)), params, len(prompts))
        call.slots = [threading.Thread(target=self._serve, args=(server, call), daemon=True,
                                       name=f"cadence-server-{server.id}-{slot}")
                      for server in self._live() for slot in range(self.window)]
        if not call.slots:
            raise NoServerLeft(self._no_server_left())
        for thread in call.slots:
            thread.start()
        return self._stream(call)

    def pop_spans(self) -> list[M.Span]:
        spans = [span for server in self.servers for span in server.spans]
        for server in self.servers:
            server.spans = []
        return spans

    def metrics(self) -> dict[str, float]:
        with self._lock:
            (redispatched, joined), self._redispatched, self._joined = (self._redispatched, self._joined), 0, 0
        return {M.ROLLOUT_ENGINES: float(len(self._live())), M.REDISPATCHED_PROMPTS: float(redispatched),
                M.JOINED_ENGINES: float(joined), **engine_busy(s for server in self.servers for s in server.spans)}

    def close(self) -> None:
        """The servers are not ours: they keep running."""

    def describe(self) -> list[dict]:
        """fleet.json rows; a dropped server's `version` is the last one sent to it."""
        return [{"id": s.id, "kind": "server", "url": s.client.url, "engine": "vllm", "version": s.version,
                 "alive": s.alive, "lost": s.lost} for s in self.servers]

    # ------------------------------------------------------------------ internals
    def _live(self) -> list[_Server]:
        return [s for s in self.servers if s.alive]

    def _add(self, url: str) -> None:
        self.servers.append(_Server(len(self.servers), ServerClient(url, self.request_timeout_s)))

    def _follow_servers_file(self) -> None:
        """Between iterations: listed URLs that are not live join (as new members), live ones not listed leave."""
        listed = read_servers_file(self.servers_file)
        live = {s.client.url: s for s in self._live()}
        for url, server in live.items():
            if url not in listed:
                self._drop(server, f"left: no longer in {self.servers_file}")
        for url in listed:
            if url not in live:
                self._add(url)
                with self._lock:
                    self._joined += 1

    def _check_version(self, server: _Server) -> None:
        if self.transfer is None:
            return
        try:
            held = server.client.weight_version()
        except ServerError as exc:
            self._drop(server, str(exc))
            return
        if held != str(self.version):
            self._drop(server, f"holds weights version {held!r}, the trainer sent {self.version}")

    def _serve(self, server: _Server, call: _Call) -> None:
        """One request slot of `server`: take a prompt, generate its group, repeat until every group of the call
        has arrived (a prompt reclaimed from a dropped server may still come), the server is dropped, or the
        consumer has gone."""
        me = (server.id, threading.get_ident())
        while server.alive and not call.over:
            taken = call.dealer.take(me, 1)
            if not taken:
                time.sleep(0.01)
                continue
            prompt, start = taken[0], time.perf_counter()
            try:
                completions = server.client.complete(prompt, call.params, self.eos_token_id)
            except Exception as exc:  # any failed request (HTTP, protocol, parsing) is the server's failure
                with self._lock:  # the prompt goes back first: nothing after this may lose it
                    self._redispatched += len(call.dealer.reclaim(me))
                self._drop(server, str(exc) if isinstance(exc, ServerError) else f"{type(exc).__name__}: {exc}")
                call.out.put(None)  # wake the stream: it checks whether anyone is left
                return
            server.spans.append(M.Span(server.lane, "generate", start - self._t0, time.perf_counter() - self._t0))
            call.out.put(RolloutGroup(prompt=prompt, completions=completions, version=self.version))
            call.dealer.done(me, prompt.index)  # after the put: an empty queue with nothing open means a loss

    def _stream(self, call: _Call) -> Iterator[RolloutGroup]:
        arrived = 0
        try:
            while arrived < call.expected:
                try:
                    item = call.out.get(timeout=_POLL_S)
                except queue.Empty:  # bounded: a group that nobody holds any more will not come
                    if call.dealer.open == 0 or not any(slot.is_alive() for slot in call.slots):
                        raise RuntimeError(f"rollout servers: {call.expected - arrived} groups of the call are "
                                           f"neither dealt nor in flight ({self._no_server_left()})") from None
                    continue
                if item is None:
                    if not self._live():
                        raise NoServerLeft(self._no_server_left())
                    continue
                arrived += 1
                yield item
        finally:
            call.over = True

    def _drop(self, server: _Server, why: str) -> None:
        with self._lock:  # two request slots of one server may fail at once
            if not server.alive:
                return
            server.alive, server.lost = False, why
            self._write_fleet_file()

    def _write_fleet_file(self) -> None:
        write_fleet_file(self.fleet_file, self.describe())

    def _no_server_left(self) -> str:
        return "no rollout server left: " + "; ".join(f"{s.client.url}: {s.lost}" for s in self.servers)


class NcclServerTransfer:
    """Weights to vLLM servers through vLLM's own trainer-side NCCL engine, one transfer group per server
    (the trainer's rank 0 at NCCL rank 0, the server's workers after it), opened at the first sync on
    `address`:`port + server index`. Needs vllm and a CUDA device in the trainer's process.
    Not run here: this project's machines have no GPU; written against vLLM 0.32's
    vllm/distributed/weight_transfer/nccl_engine.py and clients.py."""

    def __init__(self, address: str, port: int, device: torch.device) -> None:
        self.address, self.port, self.device = address, port, device
        self._engines: dict[ServerClient, object] = {}  # a rejoining server is a new client: a new group, port
        self._source = None

    def __call__(self, client: ServerClient, tensors: list[tuple[str, torch.Tensor]], version: int) -> None:
        engine = self._engines.get(client) or self._open(client, len(self._engines))
        self._source.tensors = [(name, t.to(self.device)) for name, t in tensors]
        engine.send_weights()
        client.post("update_weight_version", {"new_version": str(version)})

    def _open(self, client: ServerClient, index: int):
        from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.nccl_engine import (NCCLTrainerInitInfo,
                                                                  NCCLTrainerWeightTransferEngine)

        class ListSource(WeightSource):  # this sync's tensors, replayed by send_weights
            tensors: list[tuple[str, torch.Tensor]] = []

            def metadata(self):
                return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in self.tensors]

            def __iter__(self):
                return iter(self.tensors)

        self._source = self._source or ListSource()
        workers = int(client.get("get_world_size").get("world_size", 1))
        info = NCCLTrainerInitInfo(master_address=self.address, master_port=self.port + index,
                                   world_size=1 + workers, rank=0)
        engine = NCCLTrainerWeightTransferEngine.trainer_init(
            info, client=HTTPVLLMWeightSyncClient(client.url, client.timeout_s), source=self._source)
        self._engines[client] = engine
        return engine
