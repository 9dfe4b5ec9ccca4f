"""The embedded tool-use model, `embedded://tiny-calc`: tiny-math's recipe (engine/default_model.py) on
problems that need a calculator (engine/data/calc.py).

Built like tiny-math: a byte-level BPE trained in code, a 0.7M-parameter Qwen2, a short supervised warm
start, cached under `<cache_dir>/tiny-calc` with its own stamp (`CALC_BUILD_VERSION`). The tokenizer is
trained on the whole demonstrations, tool call and tool response included, so the call's JSON and the
response tags are a few tokens each.

Why the warm start teaches two formats
--------------------------------------
As in tiny-math, GRPO can only reinforce what the policy samples, so the warm start teaches two formats,
chosen at the first completion token (" ####" or " <"):

    direct:  " #### 69415"                                                     -- a guess, in the head
    tool:    " <tool_call>\\n{"name": "calculator", "arguments": {"expression": "1234 * 56 - 789"}}\\n</tool_call>"
             "\\n<tool_response>\\n68315\\n</tool_response>\\n"                    -- the environment's text
             " #### 68315" <eos>

The problems multiply a 3-4 digit number by a 2-digit one, which a model this small cannot do in one
forward pass: direct answers are almost always wrong. A tool call only needs copying (the numbers from the
question into the expression, the result from the response into the answer), which it learns well. The
format decision is trained towards P(tool) = `working_prior` (0.25; tiny-math's "working" is the tool
call here), so greedy decoding answers directly and starts near 0, while sampling at temperature 1 calls
the tool in about a quarter of samples. RL only has to move probability onto the tool call.

Demonstrations are what the multi-turn rollout engine (engine/rollout/multiturn.py) will see, token for
token: the prompt, the turn, the observation (rendered with the engine's default `observation_format`)
and the answer turn are tokenized SEPARATELY and concatenated, never re-tokenized across a boundary, and
the observation carries no loss (the environment wrote it; the trainer drops it from every loss too).
As in tiny-math, most examples (`working_fraction`, 0.8) show the skill, the tool call, and only some of
their first tokens are supervised, so the decision still sees a 25/75 mixture (`_sft_examples`).

Measured (`python -m engine.bench tool-use`, 200 held-out problems, 4 samples each): greedy accuracy 0.0
(every greedy answer is direct), P(tool) at the first token 0.26-0.33 per problem, 33% of samples at
temperature 1 call the tool and 93% of those are right (direct ones: 0%), and greedy decoding with the tool
call's first token forced is 97% right. 700 steps are needed: at 400 the copying is not learnt yet (tool
calls 9% right). The build takes about 2 minutes on 2 idle CPU cores.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from engine.data.calc import CalcProblem, format_prompt, make_split
from engine.default_model import (BuildSpec, _Example, build_model, run_build, save_checked, train_supervised,
                                  train_tokenizer)
from engine.envs.calculator import calculate
from engine.envs.tools import render_call
from engine.rollout.multiturn import MultiTurnOptions

CALC_BUILD_VERSION = 1  # bump whenever the tiny-calc build changes what it produces
# The engine's default rendering of a tool result: demonstrations must show exactly what rollouts append.
OBSERVATION_FORMAT = next(f.default for f in fields(MultiTurnOptions) if f.name == "observation_format")


@dataclass(frozen=True, slots=True)
class CalcBuild:
    """What the tiny-calc stamp records: the sizes (`working_*` fields are the tool call's) and the version."""

    spec: BuildSpec
    calc_build_version: int = CALC_BUILD_VERSION


CALC_BUILD = CalcBuild(BuildSpec(sft_steps=700, working_fraction=0.8, working_prior=0.25))


@dataclass(frozen=True, slots=True)
class Demonstration:
    """One problem solved with the tool, as separately tokenized segments (prompt, sampled turn, the
    environment's observation, sampled answer turn ending in eos)."""

    prompt: list[int]
    turn: list[int]
    observation: list[int]
    answer: list[int]


def build_calc_folder(folder: Path, build: CalcBuild, seed: int, log: Callable[[str], None]) -> None:
    """Build tokenizer and model, warm-start the model, save both into `folder` and check they reload."""
    spec = build.spec

    def run():
        tokenizer = train_tokenizer(_tokenizer_corpus(spec, seed), spec)
        model = build_model(spec, tokenizer)
        examples = _sft_examples(tokenizer, spec, seed)
        train_supervised(model, examples, tokenizer.pad_token_id, spec, seed, log)
        return model, tokenizer

    model, tokenizer = run_build(run, spec.threads, seed)
    heldout = make_split("heldout", 50, seed=seed)
    save_checked(folder, model, tokenizer, [format_prompt(p.question) + _tool_text(p) for p in heldout])


def tool_turn(problem: CalcProblem) -> str:
    return " " + render_call("calculator", expression=problem.expression)


def direct_turn(answer: str) -> str:
    return f" #### {answer}"


def demonstrations(tokenizer: PreTrainedTokenizerFast, problems: list[CalcProblem]) -> list[Demonstration]:
    """`problems` solved with the calculator, each segment tokenized on its own as the rollout engine does
    (one batched call per segment kind)."""
    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    results = [calculate(p.expression) for p in problems]
    prompts = encode([format_prompt(p.question) for p in problems])
    turns = encode([tool_turn(p) for p in problems])
    observations = encode([OBSERVATION_FORMAT.format(text=r) for r in results])
    answers = encode([direct_turn(r) for r in results])
    eos = tokenizer.eos_token_id
    return [Demonstration(prompt=p, turn=t, observation=o, answer=a + [eos])
            for p, t, o, a in zip(prompts, turns, observations, answers)]


def tool_example(demo: Demonstration, format_loss: bool) -> _Example:
    """The demonstration as one training sequence; the observation's span carries no loss."""
    start = len(demo.prompt) + len(demo.turn)
    return _Example(ids=demo.prompt + demo.turn + demo.observation + demo.answer, prompt_len=len(demo.prompt),
                    format_loss=format_loss, context=((start, start + len(demo.observation)),))


def _tool_text(problem: CalcProblem) -> str:
    return tool_turn(problem) + OBSERVATION_FORMAT.format(text=problem.answer) + direct_turn(problem.answer)


def _tokenizer_corpus(spec: BuildSpec, seed: int) -> list[str]:
    problems = make_split("train", spec.tokenizer_problems, seed=seed)
    return [format_prompt(p.question) + _tool_text(p) for p in problems] + [direct_turn(p.answer) for p in problems]


def _sft_examples(tokenizer: PreTrainedTokenizerFast, spec: BuildSpec, seed: int) -> list[_Example]:
    """Train problems, each solved with the tool (`spec.working_fraction`) or answered directly.

    The format decision is trained towards `spec.working_prior` as in tiny-math: with w tool examples and q
    of them supervised at the first completion token, P(tool) -> w*q / (w*q + 1 - w).
    """
    w, prior = spec.working_fraction, spec.working_prior
    keep_decision = min(1.0, prior * (1 - w) / max(w * (1 - prior), 1e-9))
    coin = random.Random(f"cadence-calc-model/format/{seed}")
    eos = tokenizer.eos_token_id
    examples = []
    for demo in demonstrations(tokenizer, make_split("train", spec.sft_problems, seed=seed)):
        if coin.random() < w:
            examples.append(tool_example(demo, format_loss=coin.random() < keep_decision))
        else:  # the same answer, written directly
            examples.append(_Example(ids=demo.prompt + demo.answer, prompt_len=len(demo.prompt), format_loss=True))
    return examples
