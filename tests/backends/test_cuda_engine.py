"""The engine on a CUDA GPU (marker `cuda`: skipped, with the reason, where torch sees none; CI has no GPU).

What these show on a lent GPU (figures in docs/benchmarks.md):
* the FlexAttention kernel inside a whole model: shared-prompt log-probs and every parameter gradient on the GPU
  equal the expanded layout's on the CPU;
* GRPO iterations run end to end with `backend.name=cuda` (rollout, tri-model, optimizer step, checkpoint);
* `pipeline.placement=split` on one GPU: the worker shares the GPU and weights travel by CUDA IPC; periodic_async
  gives the rollouts and parameters of split sync.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from engine.packing import pack_expanded, pack_groups
from engine.train import run
from helpers import max_rel_diff
from kernels.shared_prompt_attention import register_with_transformers
from parity.test_shared_prompt_model import SIZES, make_groups, packed_logprobs_and_grads, rel_err
from test_controller import small_config

pytestmark = pytest.mark.cuda

CUDA_RTOL = 1e-4  # float32 on the GPU against float32 on the CPU: other kernels, other summation orders
# The test miniature with heads of 16 dims, the smallest FlexAttention's kernels take (smaller ones fall back).
CUDA_MINI = dict(hidden_size=64, intermediate_size=128)
HEAD_DIM_64 = dict(SIZES, hidden_size=256, intermediate_size=256)  # 4 heads of 64, 2 KV heads, as real models
ARCHS = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}


@pytest.fixture(scope="module")
def cuda_model_dir(tmp_path_factory):
    from conftest import MINI_SPEC
    from engine.default_model import BuildSpec, _build_folder, _ensure

    spec = BuildSpec(**{**MINI_SPEC, **CUDA_MINI})
    return _ensure(tmp_path_factory.mktemp("models"), "tiny-math", spec, 0, lambda s: None, _build_folder)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_flex_shared_layout_on_gpu_equals_expanded_on_cpu(arch):
    groups = make_groups(seed=len(arch))
    torch.manual_seed(0)
    config_cls, model_cls = ARCHS[arch]
    model = model_cls(config_cls(**HEAD_DIM_64)).float()
    model.set_attn_implementation(register_with_transformers("reference"))
    expected = packed_logprobs_and_grads(model, pack_expanded(groups, pad_id=0))
    model.set_attn_implementation(register_with_transformers("flex"))
    model.cuda()
    logp, grads = packed_logprobs_and_grads(model, pack_groups(groups, pad_id=0, pad_to_multiple_of=16).to("cuda"))
    assert rel_err(logp.cpu(), expected[0]) < CUDA_RTOL
    for name, grad in expected[1].items():
        assert rel_err(grads[name].cpu(), grad) < CUDA_RTOL, name


def cuda_config(model_dir, tmp_path, **extra):
    return small_config(model_dir, tmp_path, **{"backend.name": "cuda", "rollout.prompts_per_iteration": 6,
                                                "rollout.max_new_tokens": 24, **extra})


def test_grpo_iterations_run_on_the_gpu(cuda_model_dir, tmp_path):
    summary = run(cuda_config(cuda_model_dir, tmp_path))
    lines = [json.loads(l) for l in (tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()][1:]
    assert [l["iteration"] for l in lines] == [1, 2, 3]  # after iteration 0's line (the accuracy before)
    assert all(l["policy/logprob_diff_max"] < 1e-3 for l in lines)  # rollout and trainer agree on the policy
    assert summary["policy_version"] == 3 and 0.0 <= summary["accuracy_after"] <= 1.0


def test_periodic_async_on_one_gpu_equals_split_sync(cuda_model_dir, tmp_path):
    weights = {}
    for schedule in ("sync", "periodic_async"):
        out = tmp_path / schedule
        run(cuda_config(cuda_model_dir, out, **{"pipeline.placement": "split", "pipeline.schedule": schedule,
                                               "eval.before": "false", "eval.after": "false"}))
        weights[schedule] = load_file(str(out / "runs" / "t" / "checkpoints" / "iter_000003" / "model.safetensors"))
    assert max_rel_diff(weights["periodic_async"], weights["sync"]) < 1e-5
