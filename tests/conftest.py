"""Hardware markers: a `cuda` / `ascend` / `vllm` test is skipped, with the reason, where that is absent."""
from __future__ import annotations

import importlib.util

import pytest


def _absent_reason(marker: str) -> str | None:
    if marker == "cuda":
        from backends.cuda.backend import CudaBackend

        return None if CudaBackend.is_present() else "no CUDA device visible to torch"
    if marker == "vllm":
        return None if importlib.util.find_spec("vllm") else "the vllm package is not installed"
    return None  # ascend tests fake torch_npu themselves, or skip inside the test


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in ("cuda", "vllm"):
            if marker in item.keywords:
                reason = _absent_reason(marker)
                if reason:
                    item.add_marker(pytest.mark.skip(reason=reason))


# A miniature of the embedded default (same tokenizer and model family, a few SFT steps): enough to run the
# whole engine in seconds. Built once per test session.
MINI_SPEC = dict(vocab_size=256, tokenizer_problems=300, hidden_size=32, num_layers=2, num_heads=4,
                 num_kv_heads=2, intermediate_size=64, sft_problems=200, sft_steps=5, batch_size=16)


# vLLM's CPU attention supports head sizes 32, 64, 80, ...: the miniature's head size 8 is widened for it.
VLLM_SPEC_OVERRIDES = dict(hidden_size=64, num_heads=2, num_kv_heads=1, intermediate_size=128)


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory):
    from engine.default_model import BuildSpec, _build_folder, _ensure

    spec = BuildSpec(**{**MINI_SPEC, **VLLM_SPEC_OVERRIDES})
    return _ensure(tmp_path_factory.mktemp("vllm-models"), "tiny-math", spec, 0, lambda s: None, _build_folder)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from engine.default_model import BuildSpec, _build_folder, _ensure

    return _ensure(tmp_path_factory.mktemp("models"), "tiny-math", BuildSpec(**MINI_SPEC), 0, lambda s: None,
                   _build_folder)
