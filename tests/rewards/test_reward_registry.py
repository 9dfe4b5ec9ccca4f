import sys
import textwrap

import pytest

from engine.config import RewardConfig
from engine.rewards import RewardResult, Scorer, gsm8k_reward, load_reward_fn


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """A throwaway importable module `my_rewards` with a few reward functions, good and bad."""
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        from engine.rewards import RewardResult

        def length(completion, reference):
            return float(len(completion))

        def flag(completion, reference):
            return completion == reference

        def detailed(completion, reference):
            return RewardResult(score=0.5, extracted=False)

        def text(completion, reference):
            return "1.0"

        def nan(completion, reference):
            return float("nan")

        def boom(completion, reference):
            raise KeyError("oops")

        def one_arg(completion):
            return 0.0

        class Judge:
            @staticmethod
            def score(completion, reference):
                return 2.0

        NOT_CALLABLE = 3
    """))
    (tmp_path / "broken_rewards.py").write_text("import package_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards"
    for name in ("my_rewards", "broken_rewards"):
        sys.modules.pop(name, None)


def test_default_path_loads_gsm8k_with_extraction():
    scorer = load_reward_fn(RewardConfig().functions[0])
    assert isinstance(scorer, Scorer)
    assert scorer("#### 1,000", "1000") == RewardResult(score=1.0, extracted=True)
    assert scorer("no answer", "1000") == RewardResult(score=0.0, extracted=False)
    # The re-export is the same function, so it gets the same twin.
    assert load_reward_fn("engine.rewards:gsm8k_reward")("nothing", "1") == RewardResult(0.0, False)
    assert gsm8k_reward("no answer", "1") == 0.0


def test_plain_functions_are_wrapped(reward_module):
    assert load_reward_fn(f"{reward_module}:length")("abc", "") == RewardResult(score=3.0, extracted=True)
    result = load_reward_fn(f"{reward_module}:flag")("x", "x")
    assert result == RewardResult(score=1.0, extracted=True) and type(result.score) is float
    assert load_reward_fn(f"{reward_module}:detailed")("x", "y") == RewardResult(score=0.5, extracted=False)
    assert load_reward_fn(f"{reward_module}:Judge.score")("x", "y").score == 2.0


@pytest.mark.parametrize(
    "path, error, message",
    [
        ("engine.rewards.gsm8k.gsm8k_reward", ValueError, "expected 'package.module:function'"),
        (":gsm8k_reward", ValueError, "expected 'package.module:function'"),
        ("engine.rewards.gsm8k:", ValueError, "expected 'package.module:function'"),
        ("no_such_package.rewards:fn", ModuleNotFoundError, "module 'no_such_package.rewards' not found"),
        ("engine.rewards.nope:fn", ModuleNotFoundError, "module 'engine.rewards.nope' not found"),
        ("broken_rewards:fn", ImportError, "importing 'broken_rewards' failed"),
        ("engine.rewards.gsm8k:missing", AttributeError, "'engine.rewards.gsm8k' has no attribute 'missing'"),
        ("my_rewards:Judge.nope", AttributeError, "'my_rewards.Judge' has no attribute 'nope'"),
        ("my_rewards:NOT_CALLABLE", TypeError, "int object is not callable"),
        ("my_rewards:one_arg", TypeError, "must accept \\(completion, reference\\)"),
    ],
)
def test_load_errors_name_the_path_and_the_problem(reward_module, path, error, message):
    with pytest.raises(error, match=message) as info:
        load_reward_fn(path)
    assert f"'{path}'" in str(info.value)


@pytest.mark.parametrize(
    "name, error, message",
    [("text", TypeError, "returned str"), ("nan", ValueError, "must be finite"), ("boom", RuntimeError, "KeyError")],
)
def test_bad_results_are_errors_naming_the_function(reward_module, name, error, message):
    scorer = load_reward_fn(f"{reward_module}:{name}")
    with pytest.raises(error, match=message) as info:
        scorer("x", "y")
    assert f"{reward_module}:{name}" in str(info.value)
