"""rollout.servers: the fleet of vLLM servers by URL, against stand-in servers speaking vLLM's HTTP routes."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine import metrics as M
from engine.config import ConfigError, load_config
from engine.rollout.base import SamplingParams
from engine.rollout.fleet.servers import (NoServerLeft, ServerError, ServerFleet, completion_request, parse_choices,
                                         read_servers_file)
from engine.types import PromptItem


class StandIn:
    """An HTTP server answering /v1/completions like vLLM (token ids and log-probs that are a pure function of
    the prompt and the seed), /weight_info and /update_weight_version. `fail_after` requests, it answers 500."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.requests, self.fail_after, self.version = 0, fail_after, None
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._reply(200, {"weight_version": stand_in.version})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/update_weight_version":
                    stand_in.version = body["new_version"]
                    return self._reply(200, {"success": True})
                stand_in.requests += 1
                if stand_in.fail_after is not None and stand_in.requests > stand_in.fail_after:
                    return self._reply(500, {"error": "engine dead"})
                self._reply(200, {"choices": [_choice(body, j) for j in range(body["n"])]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def _choice(body: dict, j: int) -> dict:
    base = (sum(body["prompt"]) * 31 + (body["seed"] or 0) + j) % 1000
    ids = [base, base + 1, body["stop_token_ids"][0]]
    return {"index": j, "text": "", "token_ids": ids, "finish_reason": "stop",
            "logprobs": {"token_logprobs": [-0.5, -0.25, -0.125], "tokens": [f"token_id:{i}" for i in ids]}}


PARAMS = SamplingParams(n=4, max_new_tokens=8, seed=3)
PROMPTS = [PromptItem(index=i, text=f"q{i}", reference="1", prompt_ids=[i + 1, 7]) for i in range(10)]


def _fleet(servers, window=2, transfer=None, **kw):
    return ServerFleet([s.url for s in servers], eos_token_id=2, window=window, request_timeout_s=5.0,
                       transfer=transfer, **kw)


def _groups(fleet):
    return {g.prompt.index: [c.token_ids for c in g.completions] for g in fleet.generate(PROMPTS, PARAMS)}


@pytest.fixture
def servers(request):
    made = []

    def make(**kw):
        made.append(StandIn(**kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_two_servers_give_the_groups_one_server_gives(servers):
    one, two = _groups(_fleet([servers()])), _groups(_fleet([servers(), servers()]))
    assert sorted(one) == list(range(10)) and one == two  # per-prompt seeds: where a prompt ran does not matter


def test_a_server_that_fails_is_dropped_and_its_prompts_go_to_the_other(servers, tmp_path):
    dying, healthy = servers(fail_after=2), servers()
    fleet = _fleet([dying, healthy], fleet_file=tmp_path / "fleet.json")
    groups = _groups(fleet)
    assert groups == _groups(_fleet([servers()]))  # every prompt once, as one server makes it
    metrics = fleet.metrics()
    assert metrics[M.ROLLOUT_ENGINES] == 1.0 and metrics[M.REDISPATCHED_PROMPTS] >= 1.0
    rows = json.loads((tmp_path / "fleet.json").read_text())["engines"]
    assert [r["alive"] for r in rows] == [False, True] and "500" in rows[0]["lost"]


def test_no_server_left_stops_with_one_line_naming_them(servers):
    a, b = servers(fail_after=0), servers(fail_after=1)
    with pytest.raises(NoServerLeft, match="no rollout server left") as err:
        _groups(_fleet([a, b]))
    assert a.url in str(err.value) and b.url in str(err.value) and "\n" not in str(err.value)


def test_a_server_that_missed_the_weight_update_gets_no_prompts(servers):
    stale, fresh = servers(), servers()

    def transfer(client, tensors, version):  # the stale server's update "succeeds" but its version stays old
        if client.url == fresh.url:
            client.post("update_weight_version", {"new_version": str(version)})

    fleet = _fleet([stale, fresh], transfer=transfer)
    fleet.load_weights([], 1)
    _groups(fleet)
    assert stale.requests == 0 and fresh.requests == 10
    assert fleet.metrics()[M.ROLLOUT_ENGINES] == 1.0


def test_without_a_transfer_a_new_version_is_refused(servers):
    fleet = _fleet([servers()])
    fleet.load_weights([], 0)
    with pytest.raises(NoServerLeft, match="cannot reach the servers"):
        fleet.load_weights([], 1)


def _versioning(client, tensors, version):  # a weight transfer that works: the server reports the new version
    client.post("update_weight_version", {"new_version": str(version)})


def _listed_fleet(tmp_path, *listed):
    """A fleet whose membership is a servers file listing `listed`, synced to version 1; and that file."""
    listing = tmp_path / "servers.txt"
    listing.write_text("# the fleet\n" + "".join(f"{server.url}\n" for server in listed))
    fleet = _fleet([], transfer=_versioning, servers_file=listing, fleet_file=tmp_path / "fleet.json")
    fleet.load_weights([], 1)
    return fleet, listing


def test_a_server_listed_in_the_servers_file_joins_at_the_next_sync_on_the_current_version(servers, tmp_path):
    first, late = servers(), servers()
    fleet, listing = _listed_fleet(tmp_path, first)
    assert _groups(fleet) == _groups(_fleet([servers()])) and late.requests == 0
    assert fleet.metrics()[M.JOINED_ENGINES] == 0.0  # the first members started the run
    listing.write_text(f"{first.url}\n\n{late.url}  # joined at iteration 2\n")
    assert late.version is None  # listed, but not a member before the sync
    fleet.load_weights([], 2)
    assert late.version == "2"  # synced to the current version before it is dealt a prompt
    groups = _groups(fleet)
    assert late.requests > 0 and first.requests > 10  # both generate the second iteration
    assert groups == _groups(_fleet([servers()]))  # per-prompt seeds: the join changes no sample
    metrics = fleet.metrics()
    assert metrics[M.ROLLOUT_ENGINES] == 2.0 and metrics[M.JOINED_ENGINES] == 1.0
    assert metrics[M.ENGINE_BUSY_PREFIX + "rollout-0"] > 0 and metrics[M.ENGINE_BUSY_PREFIX + "rollout-1"] > 0
    rows = json.loads((tmp_path / "fleet.json").read_text())["engines"]
    assert [(r["url"], r["alive"]) for r in rows] == [(first.url, True), (late.url, True)]


def test_a_server_removed_from_the_servers_file_leaves_and_a_relisted_one_rejoins(servers, tmp_path):
    a, b = servers(), servers()
    fleet, listing = _listed_fleet(tmp_path, a, b)
    listing.write_text(f"{a.url}\n")
    fleet.load_weights([], 2)
    before = b.requests
    _groups(fleet)
    assert b.requests == before and fleet.metrics()[M.ROLLOUT_ENGINES] == 1.0  # b left: no prompt reached it
    assert "no longer in" in fleet.servers[1].lost
    rows = json.loads((tmp_path / "fleet.json").read_text())["engines"]
    assert [(r["alive"], r["version"]) for r in rows] == [(True, 2), (False, 1)]  # b's row: the last it held
    listing.write_text(f"{a.url}\n{b.url}\n")
    fleet.load_weights([], 3)
    _groups(fleet)
    assert b.version == "3" and b.requests > before and fleet.metrics()[M.JOINED_ENGINES] == 1.0


def test_servers_file_errors_name_the_file_and_line(tmp_path):
    listing = tmp_path / "servers.txt"
    listing.write_text("http://a:8000\nb:8000\n")
    with pytest.raises(ValueError, match=r"servers.txt line 2: expected an http\(s\)://host:port URL, got 'b:8000'"):
        read_servers_file(listing)
    with pytest.raises(FileNotFoundError, match="rollout.servers_file: cannot read .*missing.txt"):
        read_servers_file(tmp_path / "missing.txt")
    listing.write_text("# nobody yet\n")
    with pytest.raises(NoServerLeft, match="lists no server"):
        _fleet([], servers_file=listing)


def test_request_and_answer_follow_vllms_completions_api():
    body = completion_request(PROMPTS[3], PARAMS, eos_token_id=2)
    assert body["prompt"] == [4, 7] and body["n"] == 4 and body["return_token_ids"] and body["logprobs"] == 0
    assert body["seed"] == completion_request(PROMPTS[3], PARAMS, 2)["seed"] != completion_request(PROMPTS[4], PARAMS, 2)["seed"]
    assert body["stop_token_ids"] == [2] and body["add_special_tokens"] is False
    answer = {"choices": [{"index": 0, "token_ids": [5, 2], "finish_reason": "stop",
                           "logprobs": {"token_logprobs": [-1.0, -2.0]}}]}
    with pytest.raises(ServerError, match="expected 4 choices"):
        parse_choices({"choices": answer["choices"] * 2}, 4)
    greedy = parse_choices(answer, 4)  # n = 1 for greedy: repeated G times
    assert [c.token_ids for c in greedy] == [[5, 2]] * 4 and greedy[0].finished
    with pytest.raises(ServerError, match="token_ids"):
        parse_choices({"choices": [{"index": 0, "finish_reason": "stop"}]}, 1)


def test_server_config_errors_name_the_key():
    base = ["model.path=x", "rollout.engine=vllm"]
    with pytest.raises(ConfigError, match="rollout.server_sync"):
        load_config(None, base + ["rollout.servers=[http://a:8000]"])
    with pytest.raises(ConfigError, match="rollout.servers: expected"):
        load_config(None, base + ["rollout.servers=[a:8000]", "rollout.server_sync=h:1"])
    with pytest.raises(ConfigError, match="rollout.engine=vllm"):
        load_config(None, ["model.path=x", "rollout.servers=[http://a:8000]", "rollout.server_sync=h:1"])
    ok = load_config(None, base + ["rollout.servers=[http://a:8000,http://b:8000]", "rollout.server_sync=h:29600"])
    assert ok.rollout.servers == ["http://a:8000", "http://b:8000"]
    with pytest.raises(ConfigError, match="not both"):
        load_config(None, base + ["rollout.servers=[http://a:8000]", "rollout.servers_file=s.txt",
                                  "rollout.server_sync=h:1"])
    with pytest.raises(ConfigError, match="needed with rollout.servers_file"):
        load_config(None, base + ["rollout.servers_file=s.txt"])
    assert load_config(None, base + ["rollout.servers_file=s.txt", "rollout.server_sync=h:1"]).rollout.uses_servers
