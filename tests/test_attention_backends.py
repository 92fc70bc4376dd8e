"""Which SDPA backends GLM's attention may use, and when a mask reaches SDPA at all (checked on the CPU).

On CUDA, SDPA with a mask (and, on Hopper, without one) may pick cuDNN attention, which builds a new execution plan
for every new key length: ~0.5 ms of host time per layer and decode step on an H200. GLM's forward allows only the
flash, memory-efficient and math backends, and a padding-free decode step on the dynamic cache passes no mask. The
one exception: the decode steps on the static cache that generate() keeps (one shape for every step and run).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from test_generation import default_prompt, make_model
from transformers.cache_utils import StaticCache

from glm_hf.modeling.modeling_glm import GENERATE_CACHE_KWARG, SDPA_BACKENDS, additive_attention_mask


@contextmanager
def recorded_sdpa_calls() -> Iterator[list[dict]]:
    """Every `scaled_dot_product_attention` call: whether a mask came, its query length, and the backends allowed."""
    calls: list[dict] = []
    original = torch.nn.functional.scaled_dot_product_attention

    def recording(query, key, value, attn_mask=None, *args, **kwargs):
        calls.append(
            {
                "mask": attn_mask is not None,
                "query_length": query.shape[-2],
                "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                "flash": torch.backends.cuda.flash_sdp_enabled(),
                "efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            }
        )
        return original(query, key, value, attn_mask, *args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = recording
    try:
        yield calls
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def generation_calls(**generate_options) -> list[dict]:
    model = make_model()
    input_ids, position_ids, block_position_ids, n = default_prompt()
    options = dict(position_ids=position_ids, block_position_ids=block_position_ids, prefix_length=n)
    options.update(max_new_tokens=3, min_new_tokens=3, do_sample=False, **generate_options)
    with recorded_sdpa_calls() as calls:
        model.generate(input_ids, **options)
    return calls


def test_cudnn_attention_is_never_allowed_and_the_others_are():
    assert torch.backends.cuda.cudnn_sdp_enabled()  # the process default: the forward narrows it, and restores it
    calls = generation_calls()
    assert calls and not any(call["cudnn"] for call in calls)
    assert all(call["flash"] and call["efficient"] for call in calls)
    assert torch.backends.cuda.cudnn_sdp_enabled()
    assert torch.nn.attention.SDPBackend.CUDNN_ATTENTION not in SDPA_BACKENDS


def test_prefill_with_part_a_passes_the_mixed_mask_and_padding_free_decode_steps_none():
    calls = generation_calls()
    layers = make_model().config.num_hidden_layers
    prefill, decode = calls[:layers], calls[layers:]
    assert all(call["mask"] and call["query_length"] > 1 for call in prefill)  # [sop] is causal: Part A + Part B
    assert len(decode) == 2 * layers and not any(call["mask"] for call in decode)


def test_decode_steps_of_a_left_padded_batch_keep_their_padding_mask():
    model = make_model()
    input_ids, position_ids, block_position_ids, n = default_prompt()
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), input_ids], 1)
    attention_mask = torch.cat([torch.zeros(1, 2, dtype=torch.long), torch.ones_like(input_ids)], 1)
    pad = torch.zeros(1, 2, dtype=torch.long)
    options = dict(
        position_ids=torch.cat([pad, position_ids], 1), block_position_ids=torch.cat([pad, block_position_ids], 1)
    )
    with recorded_sdpa_calls() as calls:
        model.generate(padded, attention_mask=attention_mask, prefix_length=n + 2, max_new_tokens=3, **options)
    assert calls and all(call["mask"] and not call["cudnn"] for call in calls)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_an_explicit_4d_mask_reaches_sdpa_without_cudnn(dtype):
    model = make_model()
    input_ids = default_prompt()[0]
    length = input_ids.shape[1]
    allowed = torch.ones(1, 1, length, length, dtype=torch.bool).tril()
    mask = allowed if dtype == torch.bool else torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    with recorded_sdpa_calls() as calls:
        model(input_ids, attention_mask=mask)
    assert calls and all(call["mask"] and not call["cudnn"] for call in calls)


def test_the_kept_static_cache_allows_cudnn_only_for_its_fixed_shape_decode_steps():
    """The decode steps on generate()'s kept static cache have one shape for every step and run (and a captured step
    replays its plan): every backend may run there, cuDNN included. The prefill (a new shape per prompt) and a
    caller's static cache (fill_blanks makes one per batch) keep cuDNN out."""
    calls = generation_calls(cache_implementation="static")
    layers = make_model().config.num_hidden_layers
    prefill, decode = calls[:layers], calls[layers:]
    assert all(call["mask"] for call in calls)
    assert not any(call["cudnn"] for call in prefill)
    assert decode and all(call["cudnn"] and call["query_length"] == 1 for call in decode)

    model = make_model()
    cache = StaticCache(config=model.config, max_cache_len=64)
    input_ids, position_ids, block_position_ids, n = default_prompt()
    options = {"position_ids": position_ids, "block_position_ids": block_position_ids, "prefix_length": n}
    with recorded_sdpa_calls() as given:
        model.generate(input_ids, **options, **{GENERATE_CACHE_KWARG: cache}, max_new_tokens=3, min_new_tokens=3)
    assert given and not any(call["cudnn"] for call in given)


def test_the_additive_mask_gives_sdpa_the_outputs_of_the_boolean_mask():
    """On CUDA the boolean mask is turned into SDPA's additive form once per forward (not in every layer)."""
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 4, 5, 8, generator=generator) for _ in range(3))
    mask = torch.rand(2, 1, 5, 5, generator=generator) > 0.4
    mask |= ~mask.any(dim=-1, keepdim=True)
    additive = additive_attention_mask(mask, query.dtype)
    attend = torch.nn.functional.scaled_dot_product_attention
    torch.testing.assert_close(attend(query, key, value, additive), attend(query, key, value, mask), rtol=0, atol=0)


def test_activation_checkpointing_recomputes_attention_on_the_forwards_backends():
    """Checkpointing recomputes each block in the backward pass, outside the model's forward: the recomputation must
    not pick cuDNN where the forward did not (on CUDA the two then save tensors of different shapes and fail)."""
    from conftest import blank_inputs, enable_activation_checkpointing, tiny_model

    model = tiny_model(embedding_dropout_prob=0.0, attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
    model.train()
    enable_activation_checkpointing(model)
    batch = blank_inputs()
    with recorded_sdpa_calls() as calls:
        model(**batch, labels=batch["input_ids"]).loss.backward()
    layers = model.config.num_hidden_layers
    assert len(calls) == 2 * layers  # the forward, then the recomputation in the backward pass
    assert not any(call["cudnn"] for call in calls)
