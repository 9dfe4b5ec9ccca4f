"""engine.packing: layouts, positions, segment ids and the log-prob gather maps."""
from __future__ import annotations

import pytest
import torch

from engine.packing import (gather_response_logprobs, pack_expanded, pack_groups, response_token_logprobs,
                            select_logit_positions, split_by_response)
from kernels.shared_prompt_attention import LAYOUT_KWARG, GroupSpan

PAD = 0
GROUPS = [
    ([11, 12, 13], [[21, 22], [31], [41, 42, 43]]),
    ([51, 52], [[61, 62, 63, 64]]),
]


def test_shared_row_ids_positions_and_segments():
    packed = pack_groups(GROUPS, PAD, pad_to_multiple_of=8)
    assert packed.input_ids.tolist() == [[11, 12, 13, 21, 22, 31, 41, 42, 43, 51, 52, 61, 62, 63, 64, PAD]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0]]
    layout = packed.layout
    assert layout.seq_len == 16 and layout.num_real_tokens == 15
    assert layout.groups == (GroupSpan(0, 3, (2, 1, 3)), GroupSpan(9, 2, (4,)))
    assert layout.group_ids_T.tolist() == [0] * 9 + [1] * 6 + [-1]
    assert layout.segment_ids_T.tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 3, 0, 0, 1, 1, 1, 1, -1]


def test_shared_logit_positions_predict_each_response_token():
    packed = pack_groups(GROUPS, PAD)
    ids = packed.input_ids[0]
    predictor_N = packed.logit_positions[packed.target_rows]
    # the predicting token of r_k[0] is the last prompt token; of r_k[j] it is r_k[j-1]
    expected_predictors = [13, 21, 13, 13, 41, 42, 52, 61, 62, 63]
    assert ids[predictor_N].tolist() == expected_predictors
    assert packed.target_ids.tolist() == [21, 22, 31, 41, 42, 43, 61, 62, 63, 64]
    # one log-softmax row per distinct position: the last prompt position is shared by its G responses
    assert packed.logit_positions.numel() == (1 + 1 + 0 + 2) + (1 + 3)
    assert packed.logit_positions.unique().numel() == packed.logit_positions.numel()


def test_expanded_rows_are_prompt_plus_one_response():
    packed = pack_expanded(GROUPS, PAD)
    assert packed.layout is None
    assert packed.input_ids.tolist() == [
        [11, 12, 13, 21, 22, PAD], [11, 12, 13, 31, PAD, PAD], [11, 12, 13, 41, 42, 43], [51, 52, 61, 62, 63, 64]]
    assert packed.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0]
    flat_ids = packed.input_ids.flatten()
    assert flat_ids[packed.logit_positions[packed.target_rows]].tolist() == [13, 21, 13, 13, 41, 42, 52, 61, 62, 63]
    assert packed.target_ids.tolist() == pack_groups(GROUPS, PAD).target_ids.tolist()


def test_gather_reads_log_softmax_at_the_predicting_position():
    packed = pack_groups(GROUPS, PAD, pad_to_multiple_of=4)
    V = 70
    logits_1TV = torch.randn(1, packed.input_ids.shape[1], V, dtype=torch.float64)
    logp = gather_response_logprobs(logits_1TV, packed)
    full_logp_TV = logits_1TV[0].log_softmax(-1)
    last_prompt = {0: 2, 1: 10}
    expected, offset = [], 0
    for b, (prompt, responses) in enumerate(GROUPS):
        offset += len(prompt)
        for response in responses:
            predictors = [last_prompt[b]] + list(range(offset, offset + len(response) - 1))
            expected.append(full_logp_TV[predictors, response])
            offset += len(response)
    got = [t for per_group in logp for t in per_group]
    assert [t.shape[0] for t in got] == [2, 1, 3, 4]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_selected_logits_give_the_same_logprobs():
    packed = pack_expanded(GROUPS, PAD)
    logits = torch.randn(*packed.input_ids.shape, 70)
    torch.testing.assert_close(response_token_logprobs(select_logit_positions(logits, packed), packed),
                               response_token_logprobs(logits, packed))


def test_split_by_response_shapes():
    packed = pack_groups(GROUPS, PAD)
    parts = split_by_response(torch.arange(packed.num_response_tokens), packed)
    assert [[p.tolist() for p in group] for group in parts] == [[[0, 1], [2], [3, 4, 5]], [[6, 7, 8, 9]]]


def test_model_kwargs_and_to():
    shared, expanded = pack_groups(GROUPS, PAD), pack_expanded(GROUPS, PAD)
    assert set(shared.model_kwargs()) == {"input_ids", "position_ids", "use_cache", LAYOUT_KWARG}
    assert set(expanded.model_kwargs()) == {"input_ids", "position_ids", "use_cache"}
    moved = shared.to("cpu")
    assert moved.layout.groups == shared.layout.groups and moved.response_lens == ((2, 1, 3), (4,))


@pytest.mark.parametrize("groups", [[], [([], [[1]])], [([1], [])], [([1], [[2], []])]])
def test_rejects_empty_parts(groups):
    with pytest.raises(ValueError):
        pack_groups(groups, PAD)
    with pytest.raises(ValueError):
        pack_expanded(groups, PAD)
