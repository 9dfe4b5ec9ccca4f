"""reward.model: a sequence-classification reward model scored on the actor's packed layout equals its plain
per-(prompt + response) forward (transformers' own last-non-pad pooling), in float64 to EXACT_RTOL."""
import dataclasses

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification)

from engine.config import ConfigError, RewardConfig
from engine.packing import pack_expanded, pack_groups
from engine.precision import resolve_precision
from engine.rewards.composite import Rewards, build_rewards
from engine.rewards.model import load_reward_model
from engine.trimodel import TriModel
from engine.types import Completion, PromptItem, RolloutGroup
from helpers import EXACT_RTOL, norms_in_input_dtype

PAD = 0  # the reward model's pad_token_id (and the packing pad): responses ending in it are read before it
TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, pad_token_id=PAD)
# Two groups; the last responses end in the pad id (read at the token before) or are all pad (read at the
# last prompt token), as transformers' pooling does for a plain row.
GROUPS = [([5, 9, 13, 2, 7], [[3, 4, 8], [11], [6, 12, 19, 21, PAD]]),
          ([17, 23, 4], [[30, 31], [PAD], [40, 41, 42, 43], [9, PAD, PAD]])]


def tiny_folder(path, cls=Qwen2ForSequenceClassification, **overrides):
    torch.manual_seed(0)
    config = (BertConfig if cls is BertForSequenceClassification else Qwen2Config)(**{**TINY, "num_labels": 1,
                                                                                     **overrides})
    cls(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def rm_folder(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("rm"))


def plain_scores(folder) -> torch.Tensor:
    """The reference: transformers' own forward, one unpadded (prompt + response) row at a time."""
    model = norms_in_input_dtype(AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float64))
    with torch.no_grad():
        return torch.stack([model(input_ids=torch.tensor([prompt + response])).logits[0, 0]
                            for prompt, responses in GROUPS for response in responses])


@pytest.mark.parametrize("pack", [pack_groups, pack_expanded])
def test_packed_scores_equal_the_plain_forward_in_float64(rm_folder, pack):
    rm = load_reward_model(rm_folder, 1.0, torch.device("cpu"), torch.float64, "portable")
    norms_in_input_dtype(rm.model)  # transformers' RMSNorm rounds to float32; see helpers.RMSNormInInputDtype
    assert rm.model.dtype == torch.float64 and not rm.model.training
    assert not any(p.requires_grad for p in rm.model.parameters())
    packed_S = rm.score(pack(GROUPS, pad_id=PAD), GROUPS).double()
    plain_S = plain_scores(rm_folder)
    assert packed_S.shape == plain_S.shape == (7,)
    assert ((packed_S - plain_S).abs().max() / plain_S.abs().max()).item() <= EXACT_RTOL
    # Not vacuous: reading each row's very last token instead changes exactly the pad-ending responses.
    naive_S = dataclasses.replace(rm, pad_token_id=None).score(pack(GROUPS, pad_id=PAD), GROUPS)
    assert ((naive_S - plain_S).abs() > 1e-6).tolist() == [False, False, True, False, True, False, True]


def test_trimodel_adds_the_weighted_reward_model(rm_folder):
    cfg = RewardConfig(model=rm_folder, model_weight=0.5)
    rewards = build_rewards(cfg, dtype=torch.float64)
    assert rewards.model is not None and rewards.model.weight == 0.5
    assert build_rewards(cfg, load_model=False).model is None  # torchrun ranks > 0
    norms_in_input_dtype(rewards.model.model)
    trimodel = TriModel(torch.nn.Identity(), None, rewards, decode=lambda ids: " ".join(map(str, ids)),
                        temperature=1.0, layout="shared", pad_id=PAD, precision=resolve_precision("float64", "cpu"))
    plain_S = plain_scores(rm_folder)
    start = 0
    for b, (prompt, responses) in enumerate(GROUPS):
        group = RolloutGroup(PromptItem(b, prompt, reference="8"),
                             [Completion(r, [0.0] * len(r), True) for r in responses], version=0)
        trimodel.score(group)
        correct = [1.0 if r[-1] == 8 else 0.0 for r in responses]  # gsm8k: the last number is the answer
        assert group.scores_G.tolist() == correct
        expected = torch.tensor(correct, dtype=torch.float64) + 0.5 * plain_S[start:start + len(responses)]
        assert torch.allclose(group.rewards_G.double(), expected, rtol=1e-6, atol=1e-6)
        start += len(responses)


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(
        {w: i for i, w in enumerate(words)}, unk_token=words[0])), unk_token=words[0])


def test_the_reward_model_must_share_the_actors_tokenizer(tmp_path):
    folder = tiny_folder(tmp_path / "rm")
    word_tokenizer(["<pad>", "a", "b"]).save_pretrained(folder)
    load_reward_model(folder, 1.0, torch.device("cpu"), torch.float32, "portable", word_tokenizer(["<pad>", "a", "b"]))
    with pytest.raises(ConfigError, match="tokenizer gives 2 of the actor's tokens other ids") as info:
        load_reward_model(folder, 1.0, torch.device("cpu"), torch.float32, "portable",
                          word_tokenizer(["<pad>", "b", "a"]))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case, message", [
    ("causal_lm", "config.architectures is ['Qwen2ForCausalLM']; a reward model is a *ForSequenceClassification"),
    ("two_labels", "has 2 labels; a reward model has one"),
    ("bert", "BertForSequenceClassification has no `score` head"),
    ("small_vocab", "its vocabulary (64) is smaller than the actor tokenizer's (100)"),
    ("missing", "not a folder"),
])
def test_unsupported_reward_models_are_one_line_errors(tmp_path, case, message):
    folder, tokenizer = str(tmp_path / "none"), None
    if case == "causal_lm":
        torch.manual_seed(0)
        Qwen2ForCausalLM(Qwen2Config(**TINY)).save_pretrained(folder)
    elif case == "two_labels":
        tiny_folder(folder, num_labels=2)
    elif case == "bert":
        tiny_folder(folder, cls=BertForSequenceClassification, num_hidden_layers=1, num_key_value_heads=None)
    elif case == "small_vocab":
        tiny_folder(folder)
        tokenizer = word_tokenizer([f"w{i}" for i in range(100)])
    with pytest.raises(ConfigError) as info:
        load_reward_model(folder, 1.0, torch.device("cpu"), torch.float32, "portable", tokenizer)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(f"reward.model: {folder}")


def test_rewards_without_a_model_by_default():
    assert isinstance(build_rewards(RewardConfig()), Rewards) and build_rewards(RewardConfig()).model is None
