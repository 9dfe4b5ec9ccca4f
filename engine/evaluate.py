"""Greedy accuracy on a held-out set: `cadence eval` and the run's accuracy_before / accuracy_after."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.console import log
from engine.rewards import RewardResult
from engine.rollout.base import RolloutEngine, SamplingParams
from engine.types import PromptItem


TRUNCATION_WARN_FRAC = 0.5  # more answers than this cut by max_new_tokens: a warning


@dataclass(frozen=True, slots=True)
class EvalResult:
    accuracy: float
    n: int
    no_answer_frac: float  # share of completions the reward found no answer in
    mean_response_len: float
    truncated_frac: float  # share of completions cut by max_new_tokens (no stop id or stop string met)


def evaluate(engine: RolloutEngine, items: Sequence[PromptItem], decode: Callable[[list[int]], str],
             reward_fn: Callable[[str, str], RewardResult], *, max_new_tokens: int, batch_size: int,
             stop_token_ids: tuple[int, ...], stop_strings: tuple[str, ...] = (), progress: bool = False
             ) -> EvalResult:
    """Greedy-decode one completion per item with the engine's current weights and score it. Generation stops
    at `stop_token_ids` (stopping.stop_token_ids: the tokenizer's and the model's generation_config ids) and
    at `stop_strings`. `progress`: a bar counting scored problems (removed when done)."""
    params = SamplingParams(n=1, max_new_tokens=max_new_tokens, temperature=0.0, stop_token_ids=stop_token_ids,
                            stop_strings=tuple(stop_strings))
    correct = no_answer = length = truncated = 0
    bar = _bar(len(items)) if progress else None
    for start in range(0, len(items), batch_size):
        for group in engine.generate(items[start:start + batch_size], params):
            completion = group.completions[0]
            result = reward_fn(decode(completion.token_ids), group.prompt.reference, group.prompt.text)
            correct += result.score > 0.5
            no_answer += not result.extracted
            length += len(completion.token_ids)
            truncated += not completion.finished
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    n = max(len(items), 1)
    return EvalResult(accuracy=correct / n, n=len(items), no_answer_frac=no_answer / n, mean_response_len=length / n,
                      truncated_frac=truncated / n)


def warn_if_truncated(result: EvalResult, max_new_tokens: int, setting: str) -> bool:
    """Log a warning when most answers (over TRUNCATION_WARN_FRAC) were cut by the token limit: the accuracy then
    measures the limit more than the model. Returns whether it warned."""
    if result.truncated_frac <= TRUNCATION_WARN_FRAC:
        return False
    log.warning(f"{result.truncated_frac:.0%} of the {result.n} evaluation answers were cut at {setting}="
                f"{max_new_tokens} tokens before they ended; the accuracy undercounts: raise {setting}")
    return True


def _bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="eval", unit="problem", leave=False, dynamic_ncols=True)


def write_result(result: EvalResult, path: str | Path, **context) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**context, **asdict(result)}, indent=2) + "\n")
