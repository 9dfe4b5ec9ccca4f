"""Tool-use probe: how a model answers calc problems (engine/data/calc.py) with the calculator tool.

    python -m engine.bench tool-use [--model embedded://tiny-calc] [--n 200] [--samples 4] [--threads 2]

Runs the multi-turn rollout engine (engine/rollout/multiturn.py) with a `ToolEnvironment([calculator])` on
the first `--n` held-out problems and scores full trajectories with the GSM8K reward, as a multi-turn recipe
does. Reports, as one JSON object:

- greedy_accuracy, greedy_tool_frac: greedy decoding (what a recipe's held-out evaluation measures);
- sampled_tool_frac, sampled_accuracy, tool_accuracy, direct_accuracy: `--samples` samples per problem at
  temperature 1, the share that called the tool, and the accuracy of all, of tool-using and of direct ones;
- forced_tool_accuracy: greedy decoding with the first completion token forced to the tool call's, the
  accuracy greedy would reach once RL has moved the format decision onto the tool.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.calc_model import tool_turn
from engine.data.calc import format_prompt, make_split
from engine.default_model import resolve_model_path
from engine.envs.tools import ToolEnvironment, calculator_tool
from engine.rewards.gsm8k import gsm8k_reward
from engine.rollout.base import SamplingParams
from engine.rollout.multiturn import MultiTurnOptions, MultiTurnRolloutEngine
from engine.rollout.native import NativeRolloutEngine
from engine.rollout.stopping import token_decoder
from engine.types import PromptItem

MAX_NEW_TOKENS = 64  # per turn: a tool call is ~35 tokens, an answer ~10


@dataclass(frozen=True, slots=True)
class _Outcome:
    correct: bool
    tool: bool


class _Prefixed:
    """Reads the first turn with `prefix` in front: the forced first token is part of the prompt, not of the turn."""

    def __init__(self, env: ToolEnvironment, prefix: str):
        self.env, self.prefix = env, prefix

    def step(self, turn: str):
        turn, self.prefix = self.prefix + turn, ""
        return self.env.step(turn)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m engine.bench tool-use", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded://tiny-calc")
    p.add_argument("--cache-dir", default=".cache/cadence")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = resolve_model_path(args.model, args.cache_dir)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    problems = make_split("heldout", args.n, seed=0)
    start = time.perf_counter()
    greedy = _run(model, tokenizer, problems, SamplingParams(n=1, temperature=0.0, max_new_tokens=MAX_NEW_TOKENS))
    sampled = _run(model, tokenizer, problems, SamplingParams(n=args.samples, temperature=1.0,
                                                              max_new_tokens=MAX_NEW_TOKENS, seed=1))
    forced = _run(model, tokenizer, problems, SamplingParams(n=1, temperature=0.0, max_new_tokens=MAX_NEW_TOKENS),
                  force_tool=True)
    tool = [o for o in sampled if o.tool]
    direct = [o for o in sampled if not o.tool]
    report = {"model": str(folder), "heldout": len(problems), "samples": args.samples,
              "greedy_accuracy": _mean(o.correct for o in greedy), "greedy_tool_frac": _mean(o.tool for o in greedy),
              "sampled_tool_frac": _mean(o.tool for o in sampled), "sampled_accuracy": _mean(o.correct for o in sampled),
              "tool_accuracy": _mean(o.correct for o in tool), "direct_accuracy": _mean(o.correct for o in direct),
              "forced_tool_accuracy": _mean(o.correct for o in forced), "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(report, indent=2))
    return report


def _run(model, tokenizer, problems, params: SamplingParams, force_tool: bool = False) -> list[_Outcome]:
    """One outcome per trajectory: the reward of prompt-forced prefix + trajectory text, and whether it called
    the tool."""
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    decode = token_decoder(tokenizer)
    forced_ids = encode(tool_turn(problems[0]))[:1] if force_tool else []
    prefix = decode(forced_ids)
    options = MultiTurnOptions(environment=lambda prompt, ref: _Prefixed(ToolEnvironment([calculator_tool()]), prefix),
                               encode=encode, decode=decode)
    base = NativeRolloutEngine(model, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                               device=torch.device("cpu"), max_batch_sequences=256, decode=decode)
    engine = MultiTurnRolloutEngine(base, options)
    items = [PromptItem(index=i, prompt_ids=encode(format_prompt(p.question)) + forced_ids, reference=p.answer,
                        text=format_prompt(p.question)) for i, p in enumerate(problems)]
    outcomes = []
    try:
        for group in engine.generate(items, params):
            for c in group.completions:
                text = prefix + decode(c.token_ids)
                outcomes.append(_Outcome(correct=gsm8k_reward(text, group.prompt.reference) == 1.0,
                                         tool=c.episode.tool_calls > 0))
    finally:
        engine.close()
    return outcomes


def _mean(flags) -> float | None:
    values = [float(f) for f in flags]
    return round(sum(values) / len(values), 4) if values else None
