"""ChatGLM-6B positions and masks from the ids alone equal the original's (fixture from modeling_chatglm.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from glm_hf.modeling.chatglm_positions import chatglm_position_ids, chatglm_step_position_ids, chatglm_visibility
from glm_hf.modeling.chatglm_rotary import ChatGLMRotaryEmbedding, apply_rotary

FIXTURE = json.loads(
    gzip.decompress((Path(__file__).parent / "fixtures" / "original_chatglm_positions.json.gz").read_bytes())
)
TOKEN_IDS = FIXTURE["token_ids"]


@pytest.mark.parametrize("name", sorted(FIXTURE["cases"]))
def test_positions_and_visibility_equal_the_original(name: str) -> None:
    case = FIXTURE["cases"][name]
    input_ids = torch.tensor(case["input_ids"])
    positions = chatglm_position_ids(
        input_ids,
        mask_token_id=TOKEN_IDS["mask_token_id"],
        gmask_token_id=TOKEN_IDS["gmask_token_id"],
        bos_token_id=TOKEN_IDS["bos_token_id"],
        position_encoding_2d=name.endswith("_2d"),
    )
    assert positions.tolist() == case["position_ids"]
    visibility = chatglm_visibility(input_ids, bos_token_id=TOKEN_IDS["bos_token_id"])
    assert visibility.int().tolist() == case["visibility"]


def test_fixture_covers_both_position_variants_and_both_mask_tokens() -> None:
    names = set(FIXTURE["cases"])
    assert {n for n in names if n.endswith("_1d")} and {n for n in names if n.endswith("_2d")}
    all_ids = {i for case in FIXTURE["cases"].values() for row in case["input_ids"] for i in row}
    assert {TOKEN_IDS["mask_token_id"], TOKEN_IDS["gmask_token_id"]} <= all_ids


def test_row_without_sop_is_refused_naming_the_row() -> None:
    input_ids = torch.tensor([[10, 59, 62], [10, 11, 59]])
    with pytest.raises(ValueError, match=r"row\(s\) \[1\].*<sop> \(id 62\)"):
        chatglm_position_ids(input_ids, mask_token_id=58, gmask_token_id=59, bos_token_id=62)
    with pytest.raises(ValueError, match=r"row\(s\) \[1\].*<sop>"):
        chatglm_visibility(input_ids, bos_token_id=62)


def test_row_without_mask_token_is_refused_naming_both_ids() -> None:
    input_ids = torch.tensor([[10, 59, 62], [10, 11, 62]])
    with pytest.raises(ValueError, match=r"row\(s\) \[1\].*\[gMASK\] \(id 59\) or \[MASK\] \(id 58\)"):
        chatglm_position_ids(input_ids, mask_token_id=58, gmask_token_id=59, bos_token_id=62)


@pytest.mark.parametrize("name", sorted(FIXTURE["cases"]))
def test_rotary_on_grouped_qkv_equals_the_original(name: str) -> None:
    """Per-head grouped `query_key_value` rows ([q_h | k_h | v_h]) rotated as the original does, bit for bit."""
    case = FIXTURE["cases"][name]
    raw = torch.tensor(case["query_key_value"])  # [T, B, heads * 3 * head_dim]
    expected_query = torch.tensor(case["rotated_query"])  # [T, B, heads, head_dim]
    seq_length, batch_size, heads, head_dim = expected_query.shape
    query, key, _ = raw.view(seq_length, batch_size, heads, 3 * head_dim).permute(1, 2, 0, 3).chunk(3, dim=-1)
    two_d = name.endswith("_2d")
    position_ids = torch.tensor(case["position_ids"])
    positions, blocks = (position_ids[:, 0], position_ids[:, 1]) if two_d else (position_ids, None)
    cos, sin = ChatGLMRotaryEmbedding(head_dim, position_encoding_2d=two_d)(positions, blocks, query.dtype)
    query, key = apply_rotary(query, cos, sin, two_d), apply_rotary(key, cos, sin, two_d)
    torch.testing.assert_close(query.permute(2, 0, 1, 3), expected_query, rtol=0, atol=0)
    torch.testing.assert_close(key.permute(2, 0, 1, 3), torch.tensor(case["rotated_key"]), rtol=0, atol=0)


def test_rotary_frequencies_are_rounded_through_fp16() -> None:
    rotary = ChatGLMRotaryEmbedding(64)
    exact = 1.0 / (10000 ** (torch.arange(0, 32, 2).float() / 32))
    assert torch.equal(rotary.inv_freq, exact.half().float())
    assert not torch.equal(rotary.inv_freq, exact)


@pytest.mark.parametrize("name", sorted(FIXTURE["cases"]))
def test_decoding_step_positions_equal_the_original_generation(name: str) -> None:
    case = FIXTURE["cases"][name]
    positions = chatglm_step_position_ids(
        torch.tensor(case["input_ids"]),
        mask_token_id=TOKEN_IDS["mask_token_id"],
        gmask_token_id=TOKEN_IDS["gmask_token_id"],
        bos_token_id=TOKEN_IDS["bos_token_id"],
        position_encoding_2d=name.endswith("_2d"),
    )
    assert positions.tolist() == case["step_position_ids"]
