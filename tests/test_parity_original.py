"""Logits of glm-hf against the ORIGINAL THUDM/GLM code.

`fixtures/original_glm_reference.safetensors` was written by `fixtures/make_original_reference.py`, which runs the
public THUDM/GLM `model/modeling_glm.py` (commit 4f61ed72) on CPU: a tiny random model (its weights under
`weights.*`, original key names), inputs and the original's logits for each case. Nothing here runs the original.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import glm_hf
from glm_hf.conversion import original_to_hf_state_dict

from conftest import TINY_TOKEN_IDS

FIXTURE = Path(__file__).parent / "fixtures" / "original_glm_reference.safetensors"
ATOL = 2e-5  # fp32 rounding: the original scales K before QK^T, we scale the product


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    with safe_open(FIXTURE, "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        tensors["__config__"] = json.loads(handle.metadata()["config"])
    return tensors


def converted_model(reference: dict, attn_implementation: str) -> glm_hf.GLMForConditionalGeneration:
    original = reference["__config__"]
    config = glm_hf.GLMConfig(
        vocab_size=original["vocab_size"],
        hidden_size=original["hidden_size"],
        num_hidden_layers=original["num_layers"],
        num_attention_heads=original["num_attention_heads"],
        max_position_embeddings=original["max_sequence_length"] + 1,
        layer_norm_eps=original["layernorm_epsilon"],
        **TINY_TOKEN_IDS,
    )
    model = glm_hf.GLMForConditionalGeneration._from_config(config, attn_implementation=attn_implementation)
    weights = {key.removeprefix("weights."): value for key, value in reference.items() if key.startswith("weights.")}
    missing, unexpected = model.load_state_dict(original_to_hf_state_dict(weights), strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # the head is tied to the word embeddings
    assert model.lm_head.weight.data_ptr() == model.glm.word_embeddings.weight.data_ptr()
    return model.eval()


def separation(mask: torch.Tensor) -> int | torch.Tensor:
    """The original's scalar ([1]) or per-sample ([B]) separation index, as our `prefix_length`."""
    return int(mask) if mask.numel() == 1 else mask


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def model(request, reference) -> glm_hf.GLMForConditionalGeneration:
    return converted_model(reference, request.param)


@pytest.mark.parametrize("case", ["scalar", "per_sample", "right_pad"])
def test_logits_match_original_for_scalar_and_per_sample_prefix(model, reference, case):
    with torch.no_grad():
        logits = model(
            reference[f"{case}.input_ids"],
            position_ids=reference[f"{case}.position_ids"],
            prefix_length=separation(reference[f"{case}.attention_mask"]),
        ).logits
    torch.testing.assert_close(logits, reference[f"{case}.logits"], atol=ATOL, rtol=0)


def test_right_padding_with_a_padding_mask_keeps_real_tokens_equal(model, reference):
    lengths = reference["right_pad.lengths"]
    input_ids = reference["right_pad.input_ids"]
    padding_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        logits = model(
            input_ids,
            position_ids=reference["right_pad.position_ids"],
            prefix_length=reference["right_pad.attention_mask"],
            attention_mask=padding_mask,
        ).logits
    real = padding_mask.bool()
    torch.testing.assert_close(logits[real], reference["right_pad.logits"][real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("form", ["bool", "additive"])
def test_explicit_4d_mask_matches_original(model, reference, form):
    mask = reference["explicit_mask.attention_mask"]
    mask = mask.bool() if form == "bool" else (1.0 - mask) * torch.finfo(torch.float32).min
    with torch.no_grad():
        logits = model(
            reference["explicit_mask.input_ids"],
            position_ids=reference["explicit_mask.position_ids"],
            attention_mask=mask,
        ).logits
    torch.testing.assert_close(logits, reference["explicit_mask.logits"], atol=ATOL, rtol=0)


def test_kv_cache_decoding_matches_original_mems(model, reference):
    with torch.no_grad():
        prompt = model(
            reference["decode.prompt_ids"],
            position_ids=reference["decode.prompt_position_ids"],
            prefix_length=separation(reference["decode.prompt_attention_mask"]),
            use_cache=True,
        )
        torch.testing.assert_close(prompt.logits, reference["decode.prompt_logits"], atol=ATOL, rtol=0)
        cache = prompt.past_key_values
        step_logits = []
        for step in range(reference["decode.step_ids"].shape[1]):
            output = model(
                reference["decode.step_ids"][:, step : step + 1],
                position_ids=reference["decode.step_position_ids"][:, :, step : step + 1],
                past_key_values=cache,
                use_cache=True,
            )
            cache = output.past_key_values
            step_logits.append(output.logits)
    torch.testing.assert_close(torch.cat(step_logits, dim=1), reference["decode.step_logits"], atol=ATOL, rtol=0)


def test_multi_token_chunk_on_cache_matches_original(model, reference):
    with torch.no_grad():
        prompt = model(
            reference["decode.prompt_ids"], position_ids=reference["decode.prompt_position_ids"], use_cache=True
        )
        chunk = model(
            reference["decode.chunk_ids"],
            position_ids=reference["decode.chunk_position_ids"],
            past_key_values=prompt.past_key_values,
            use_cache=True,
        )
    torch.testing.assert_close(chunk.logits, reference["decode.chunk_logits"], atol=ATOL, rtol=0)
