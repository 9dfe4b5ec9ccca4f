"""Several weighted reward functions: the weighted sum trains, the first function alone is the correctness one;
functions that name `prompt` get the rendered prompt; the `reward` config section and its one-line errors."""
import sys
import textwrap

import pytest
import torch

from engine.config import ConfigError, RewardConfig, load_config, save_config
from engine.precision import resolve_precision
from engine.rewards import boxed_format_reward, gsm8k_format_reward, load_reward_fn
from engine.rewards.composite import build_rewards
from engine.trimodel import TriModel
from engine.types import Completion, PromptItem, RolloutGroup

GSM8K = "engine.rewards.gsm8k:gsm8k_reward"
FORMAT = "engine.rewards.format:gsm8k_format_reward"


@pytest.fixture
def prompt_module(tmp_path, monkeypatch):
    """An importable module `prompt_rewards` with prompt-aware and plain functions."""
    (tmp_path / "prompt_rewards.py").write_text(textwrap.dedent("""
        def positional(completion, reference, prompt):
            return float(prompt.startswith("Q:"))

        def keyword_only(completion, reference, *, prompt=""):
            return float(len(prompt))

        def catch_all(completion, reference, **kwargs):  # **kwargs does not ask for the prompt
            return float("prompt" in kwargs)

        def length(completion, reference):
            return float(len(completion))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "prompt_rewards"
    sys.modules.pop("prompt_rewards", None)


def text_group(texts: list[str], reference: str = "42", prompt: str = "Q: what is 6 * 7?") -> RolloutGroup:
    """A group whose token ids are the characters of `texts` (decode with `chars`)."""
    completions = [Completion([ord(ch) for ch in text], [0.0] * len(text), True) for text in texts]
    return RolloutGroup(PromptItem(0, [ord(ch) for ch in prompt], reference, text=prompt), completions, version=0)


def chars(ids: list[int]) -> str:
    return "".join(map(chr, ids))


def text_trimodel(cfg: RewardConfig, overlong=None) -> TriModel:
    return TriModel(torch.nn.Identity(), None, build_rewards(cfg), decode=chars, temperature=1.0, layout="shared",
                    pad_id=0, precision=resolve_precision("float32", "cpu"), overlong=overlong)


def test_default_is_todays_single_function():
    trimodel = text_trimodel(RewardConfig())
    group = text_group(["so #### 42", "#### 41", "no idea"])
    trimodel.score(group)
    assert group.scores_G.tolist() == group.rewards_G.tolist() == [1.0, 0.0, 0.0]
    assert group.extracted == [True, True, False] and group.reward_timeouts == 0


def test_weighted_sum_trains_and_the_first_function_drives_accuracy(prompt_module):
    cfg = RewardConfig(functions=[GSM8K, FORMAT, f"{prompt_module}:length"], weights=[1.0, 0.5, -0.01])
    trimodel = text_trimodel(cfg)
    texts = ["6 * 7 = 42\n#### 42", "it is 42", "#### 41", "none"]
    group = text_group(texts)
    trimodel.score(group)
    correct, fmt = [1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]
    expected = [c + 0.5 * f - 0.01 * len(t) for c, f, t in zip(correct, fmt, texts)]
    assert group.scores_G.tolist() == correct  # accuracy reads score > 0.5 of the first function alone
    assert group.rewards_G.tolist() == pytest.approx(expected, abs=1e-6)
    assert group.extracted == [True, True, True, False]  # the first function's, not the format reward's
    # Held-out evaluation gets the correctness function alone.
    assert trimodel.reward_fn("#### 42", "42").score == 1.0


def test_overlong_penalty_is_added_to_the_weighted_sum():
    cfg = RewardConfig(functions=[GSM8K, FORMAT], weights=[1.0, 1.0])
    trimodel = text_trimodel(cfg, overlong=(8, 4, 1.0))  # max_new_tokens 8, buffer 4: -1 at 8 tokens
    group = text_group(["#### 42", "#### 42!"])  # 7 and 8 tokens
    trimodel.score(group)
    assert group.scores_G.tolist() == [1.0, 1.0]
    assert group.rewards_G.tolist() == pytest.approx([2.0 - 0.75, 1.0 - 1.0])


def test_a_weight_zero_function_only_measures(prompt_module):
    trimodel = text_trimodel(RewardConfig(functions=[GSM8K, f"{prompt_module}:length"], weights=[0.0, 1.0]))
    group = text_group(["#### 42", "x"])
    trimodel.score(group)
    assert group.scores_G.tolist() == [1.0, 0.0] and group.rewards_G.tolist() == [7.0, 1.0]


def test_functions_that_name_prompt_get_the_rendered_prompt(prompt_module):
    positional, keyword_only, catch_all, length = (load_reward_fn(f"{prompt_module}:{name}") for name in
                                                   ("positional", "keyword_only", "catch_all", "length"))
    assert positional.wants_prompt and keyword_only.wants_prompt
    assert not catch_all.wants_prompt and not length.wants_prompt
    cfg = RewardConfig(functions=[f"{prompt_module}:{n}" for n in ("positional", "keyword_only", "catch_all")],
                       weights=[1.0, 1.0, 1.0])
    rewards = build_rewards(cfg).functions
    group = text_group(["a", "bc"], prompt="Q: hi")
    results = rewards.run([(i, "a", "42", group.prompt.text) for i in range(3)]).results
    assert [r.score for r in results] == [1.0, 5.0, 0.0]
    trimodel = text_trimodel(cfg)
    trimodel.score(group)
    assert group.scores_G.tolist() == [1.0, 1.0] and group.rewards_G.tolist() == [6.0, 6.0]


def test_format_rewards():
    assert gsm8k_format_reward("6 * 7 = 42\n#### 42\n", "") == 1.0
    assert gsm8k_format_reward("#### $1,000", "") == 1.0
    for text in ("#### 42 apples", "#### 42\nthanks", "the answer is 42", "#### ", "", "####"):
        assert gsm8k_format_reward(text, "") == 0.0, text
    assert boxed_format_reward(r"so \boxed{\frac{1}{2}}.", "") == 1.0
    for text in (r"\boxed{1} or \boxed{2}", r"\boxed{", r"\boxed{}", "42"):
        assert boxed_format_reward(text, "") == 0.0, text


def test_old_single_function_key_is_an_alias(tmp_path):
    cfg = load_config(None, ["model.path=/m", "reward.function=engine.rewards.math:math_reward"])
    assert cfg.reward.weighted_functions == [("engine.rewards.math:math_reward", 1.0)]
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg  # a saved run config loads back (resume)
    assert RewardConfig(functions=[GSM8K, FORMAT], weights=[1, 0.1]).weighted_functions == [(GSM8K, 1), (FORMAT, 0.1)]


@pytest.mark.parametrize("overrides, message", [
    (["reward.functions=[a:b,c:d]"], "reward.weights: 1 weights for 2 reward.functions"),
    (["reward.functions=[a:b]", "reward.weights=[1,2]"], "reward.weights: 2 weights for 1 reward.functions"),
    (["reward.functions=[]", "reward.weights=[]"], "reward.functions: needs at least one function"),
    (["reward.function=a:b", "reward.functions=[c:d]"], "reward.function: the old single-function key cannot be"),
    (["reward.function=a:b", "reward.weights=[2]"], "reward.function: the old single-function key cannot be"),
    (["reward.timeout_s=-1"], "reward.timeout_s: must be >= 0"),
    (["reward.model_weight=0.5"], "reward.model_weight: only read with reward.model"),
    (["reward.weights=[.inf]"], "reward.weights, reward.model_weight: must be finite"),
    (["reward.weights=fast"], "reward.weights: expected a list"),
])
def test_config_errors_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.path=/m", *overrides])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_bad_path_fails_at_build():
    with pytest.raises(ModuleNotFoundError, match="reward.functions 'no_such_module:fn'"):
        build_rewards(RewardConfig(functions=[GSM8K, "no_such_module:fn"], weights=[1.0, 1.0]))
