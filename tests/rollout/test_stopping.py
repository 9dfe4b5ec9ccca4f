"""Stop conditions: the stop ids of a tokenizer plus a generation_config, where that config is read from, and
the stop-string matcher against a full-text reference (strings that span tokens and split characters)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import GenerationConfig

from engine.default_model import BuildSpec, build_tokenizer
from engine.rollout.stopping import StopStrings, load_generation_config, stop_token_ids, token_decoder

TEXTS = ["Answer: 3.14 ≥ 2 wörds\n\n#### 5 apples", "Tom has 3 apples.\nHe buys 4 more.\n#### 7",
         "ö≥ö ≥≥ 12 + 30 = 42\n\n\n####"]
STOPS = [("≥",), ("\n\n",), ("ds\n",), ("4 ≥",), ("####",), (" 2",), ("ö",), ("es.\nHe",), ("apples",),
         ("zzz",), ("+ 3", "= 4"), ("Answer: ",), (" ",), ("#### 5 apples",)]


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE with merges ("Answer", "ds", " apples"), so strings start and end inside tokens."""
    return build_tokenizer(BuildSpec(vocab_size=400, tokenizer_problems=300), seed=0)


def reference_first_stop(ids: list[int], strings: tuple[str, ...], decode) -> int | None:
    """The first token after which the whole completion's text contains a stop string."""
    return next((i for i in range(len(ids)) if any(s in decode(ids[:i + 1]) for s in strings)), None)


def test_stop_ids_are_the_tokenizer_eos_then_the_generation_config_ids():
    tokenizer = SimpleNamespace(eos_token_id=7)
    assert stop_token_ids(tokenizer, None) == (7,)
    assert stop_token_ids(tokenizer, GenerationConfig(eos_token_id=9)) == (7, 9)
    # Qwen2.5-Instruct: <|endoftext|> is the tokenizer's eos, <|im_end|> ends a turn: both, once each.
    assert stop_token_ids(tokenizer, GenerationConfig(eos_token_id=[12, 7, 9, 12])) == (7, 12, 9)
    assert stop_token_ids(SimpleNamespace(eos_token_id=None), GenerationConfig(eos_token_id=[3, 4])) == (3, 4)
    assert stop_token_ids(SimpleNamespace(eos_token_id=None), GenerationConfig()) == ()


def test_the_generation_config_comes_from_the_folder_else_from_the_model(tmp_path):
    GenerationConfig(eos_token_id=[5, 6], pad_token_id=0).save_pretrained(tmp_path / "with")
    assert load_generation_config(tmp_path / "with").eos_token_id == [5, 6]
    model = SimpleNamespace(generation_config=GenerationConfig(eos_token_id=8))
    (tmp_path / "without").mkdir()
    assert load_generation_config(tmp_path / "without", model).eos_token_id == 8
    assert load_generation_config(tmp_path / "with", model).eos_token_id == [5, 6]  # the file wins
    assert load_generation_config(tmp_path / "without") is None


@pytest.mark.parametrize("strings", STOPS)
def test_the_matcher_stops_where_the_full_text_first_contains_a_string(tokenizer, strings):
    decode = token_decoder(tokenizer)
    matcher = StopStrings(strings, decode)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert matcher.first_stop(ids) == reference_first_stop(ids, strings, decode), text


def test_a_string_spanning_tokens_and_split_characters_is_found(tokenizer):
    decode = token_decoder(tokenizer)
    ids = tokenizer.encode("wörds ≥ 4")
    assert [decode([i]) for i in ids].count("\ufffd") >= 4  # ö and ≥ are spelled by byte tokens
    stop = StopStrings(("ö", "s ≥"), decode).first_stop(ids)
    assert decode(ids[:stop + 1]) == "wö"  # the token that completes the character, not the first byte
    assert StopStrings(("ds ≥",), decode).first_stop(ids) is not None


def test_most_tokens_skip_the_decode_and_a_decode_is_bounded(tokenizer):
    decode = token_decoder(tokenizer)
    calls: list[int] = []
    matcher = StopStrings(("####",), lambda ids: calls.append(len(ids)) or decode(ids))
    ids = tokenizer.encode("Tom has 3 apples and buys 4 more. How many apples does Tom have now?\n" * 20 + "#### 7")
    stop = matcher.first_stop(ids)
    assert decode(ids[:stop + 1]).endswith("####")
    assert max(calls) <= matcher.window == len("####") + 2
    tail_decodes = [n for n in calls if n > 1]
    assert len(tail_decodes) <= 2  # only tokens whose text holds a "#" are looked at in context


def test_a_string_ending_in_a_space_is_matched_without_the_prefilter(tokenizer):
    decode = token_decoder(tokenizer)
    ids = tokenizer.encode("He buys 4 more apples")
    stop = StopStrings(("more ",), decode).first_stop(ids)
    assert decode(ids[:stop + 1]).endswith("more apples")  # " apples" is one token: it completes "more "


def test_stop_strings_must_be_non_empty():
    with pytest.raises(ValueError, match="non-empty"):
        StopStrings((), lambda ids: "")
    with pytest.raises(ValueError, match="non-empty"):
        StopStrings(("a", ""), lambda ids: "")
