from pathlib import Path

import pytest

from engine.data.gsm8k import Example, load_jsonl
from engine.data.stream import PromptStream

TINY = Path(__file__).resolve().parents[1] / "assets" / "gsm8k_tiny"


class CharTokenizer:
    """One token per character: prompt length in tokens is the rendered text's length."""

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]


def _examples(n=10):
    # Question i renders to "Question: " + "x" * i + "\nAnswer:", i.e. 18 + i tokens.
    return [Example(question="x" * i, answer=str(i)) for i in range(n)]


def _stream(examples=None, seed=0, shuffle=True, max_prompt_tokens=1000):
    return PromptStream(examples if examples is not None else _examples(), CharTokenizer(), "plain", "",
                        max_prompt_tokens, seed, shuffle)


def _ids(batch):
    return [item.index for item in batch]


def test_items_carry_prompt_tokens_reference_and_text():
    (item,) = _stream(shuffle=False).next_batch(1)
    assert item.text == "Question: \nAnswer:"
    assert item.prompt_ids == [ord(c) for c in item.text]
    assert (item.index, item.reference) == (0, "0")


def test_each_epoch_is_a_permutation_and_indices_are_unique_in_the_run():
    stream = _stream()
    batches = [stream.next_batch(4) for _ in range(10)]  # 40 prompts = 4 epochs of 10, batches cross epochs
    indices = [i for batch in batches for i in _ids(batch)]
    assert len(set(indices)) == 40
    for epoch in range(4):
        assert sorted(indices[epoch * 10:(epoch + 1) * 10]) == list(range(epoch * 10, epoch * 10 + 10))
    orders = [[i % 10 for i in indices[e * 10:(e + 1) * 10]] for e in range(4)]
    assert len({tuple(o) for o in orders}) > 1, "epochs should be reshuffled"
    assert stream.epoch == 4


def test_order_depends_on_seed_and_shuffle_flag():
    first = _ids(_stream(seed=0).next_batch(10))
    assert first == _ids(_stream(seed=0).next_batch(10))
    assert first != _ids(_stream(seed=1).next_batch(10))
    assert _ids(_stream(shuffle=False).next_batch(10)) == list(range(10))


def test_long_prompts_are_skipped_and_counted():
    stream = _stream(max_prompt_tokens=18 + 6)  # questions 0..6 fit
    assert (stream.num_prompts, stream.num_skipped) == (7, 3)
    batch = stream.next_batch(14)
    assert sorted(i % 10 for i in _ids(batch)) == sorted(list(range(7)) * 2)
    assert all(len(item.prompt_ids) <= 24 for item in batch)
    with pytest.raises(ValueError, match="all 10 examples are longer than data.max_prompt_tokens=5"):
        _stream(max_prompt_tokens=5)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
def test_resume_yields_exactly_the_uninterrupted_batches(k):
    reference = _stream(seed=3)
    expected = [reference.next_batch(3) for _ in range(k + 6)]

    first = _stream(seed=3)
    for _ in range(k):
        first.next_batch(3)
    state = dict(first.state_dict())  # e.g. saved in a checkpoint
    resumed = _stream(seed=3)
    resumed.load_state_dict(state)
    assert [resumed.next_batch(3) for _ in range(6)] == expected[k:]


def test_resume_refuses_other_data_or_order():
    state = _stream(seed=3).state_dict()
    with pytest.raises(ValueError, match="seed=3.*seed=4"):
        _stream(seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="num_examples"):
        _stream(examples=_examples(11), seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="num_prompts"):
        _stream(seed=3, max_prompt_tokens=20).load_state_dict(state)
    with pytest.raises(ValueError, match="out of range"):
        _stream(seed=3).load_state_dict(state | {"cursor": 10})


def test_handed_out_items_cannot_alter_the_stream():
    stream = _stream(shuffle=False)
    stream.next_batch(10)[0].prompt_ids.clear()
    assert stream.next_batch(1)[0].prompt_ids


def test_streams_the_tiny_gsm8k_subset():
    examples = load_jsonl(TINY / "train.jsonl")
    stream = PromptStream(examples, CharTokenizer(), "plain", "", 200, seed=0, shuffle=True)
    assert stream.num_prompts + stream.num_skipped == 32 and stream.num_skipped > 0
    batch = stream.next_batch(8)
    for item in batch:  # the index finds the example, whatever the epoch
        example = examples[item.index % len(examples)]
        assert item.reference == example.answer and example.question in item.text
