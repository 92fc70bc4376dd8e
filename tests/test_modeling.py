"""Behaviour of GLMModel / GLMForConditionalGeneration on tiny random models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

import glm_hf

from conftest import blank_inputs, tiny_config, tiny_model


def test_cached_incremental_decoding_equals_full_recomputation():
    model = tiny_model()
    inputs = blank_inputs(part_a=9, part_b=5)
    with torch.no_grad():
        full = model(**inputs).logits
        prefix = model(
            inputs["input_ids"][:, :9],
            position_ids=inputs["position_ids"][:, :9],
            block_position_ids=inputs["block_position_ids"][:, :9],
            prefix_length=inputs["prefix_length"],
            use_cache=True,
        )
        cache, pieces = prefix.past_key_values, [prefix.logits]
        for step in range(9, 14):
            output = model(
                inputs["input_ids"][:, step : step + 1],
                position_ids=inputs["position_ids"][:, step : step + 1],
                block_position_ids=inputs["block_position_ids"][:, step : step + 1],
                prefix_length=inputs["prefix_length"],
                past_key_values=cache,
                use_cache=True,
            )
            cache = output.past_key_values
            pieces.append(output.logits)
    assert cache.get_seq_length() == 14
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("padding", [False, True])
def test_sdpa_equals_eager(padding):
    eager, sdpa = tiny_model("eager"), tiny_model("sdpa")
    inputs = blank_inputs(batch_size=3)
    if padding:
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        inputs["attention_mask"][1, :3] = 0
        inputs["prefix_length"] = torch.tensor([9, 2, 0])  # row 1: pads in the causal part see nothing
    with torch.no_grad():
        torch.testing.assert_close(sdpa(**inputs).logits, eager(**inputs).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_query_rows_that_see_nothing_stay_finite(attn_implementation):
    model = tiny_model(attn_implementation)
    input_ids = torch.tensor([[0, 0, 0, 11, 12, 13], [21, 22, 23, 24, 25, 26]])
    attention_mask = (input_ids != 0).long()
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids, position_ids=position_ids, attention_mask=attention_mask, prefix_length=0).logits
    assert torch.isfinite(logits).all()
    # The real tokens of the padded row equal the same tokens without padding.
    with torch.no_grad():
        alone = model(input_ids[:1, 3:], prefix_length=0).logits
    torch.testing.assert_close(logits[:1, 3:], alone, atol=1e-5, rtol=0)


def test_left_padding_with_position_ids_matches_unpadded_batch_element():
    model = tiny_model()
    inputs = blank_inputs(batch_size=1)
    pad = 3
    padded = {
        "input_ids": torch.nn.functional.pad(inputs["input_ids"], (pad, 0)),
        "position_ids": torch.nn.functional.pad(inputs["position_ids"], (pad, 0)),
        "block_position_ids": torch.nn.functional.pad(inputs["block_position_ids"], (pad, 0)),
        "prefix_length": inputs["prefix_length"] + pad,
        "attention_mask": torch.nn.functional.pad(torch.ones_like(inputs["input_ids"]), (pad, 0)),
    }
    with torch.no_grad():
        torch.testing.assert_close(model(**padded).logits[:, pad:], model(**inputs).logits, atol=1e-5, rtol=0)


def test_prefix_length_default_is_bidirectional_and_scalar_equals_tensor():
    model = tiny_model()
    inputs = blank_inputs()
    input_ids = inputs["input_ids"]
    with torch.no_grad():
        default = model(input_ids).logits
        everything = model(input_ids, prefix_length=input_ids.shape[1]).logits
        scalar = model(input_ids, prefix_length=5).logits
        per_sample = model(input_ids, prefix_length=torch.tensor([5, 5])).logits
        causal = model(input_ids, prefix_length=0).logits
    torch.testing.assert_close(default, everything, atol=0, rtol=0)
    torch.testing.assert_close(scalar, per_sample, atol=0, rtol=0)
    assert not torch.allclose(scalar, default, atol=1e-3)
    # In a causal model the first token's logits cannot depend on later tokens.
    changed = input_ids.clone()
    changed[:, -1] = 7
    with torch.no_grad():
        torch.testing.assert_close(model(changed, prefix_length=0).logits[:, :-1], causal[:, :-1], atol=1e-5, rtol=0)


def test_part_a_does_not_see_part_b():
    model = tiny_model()
    inputs = blank_inputs()
    changed = {**inputs, "input_ids": inputs["input_ids"].clone()}
    changed["input_ids"][:, 10:] = 7
    with torch.no_grad():
        original, modified = model(**inputs).logits, model(**changed).logits
    torch.testing.assert_close(modified[:, :10], original[:, :10], atol=1e-5, rtol=0)
    assert not torch.allclose(modified[:, 10:], original[:, 10:], atol=1e-3)


def test_stacked_position_ids_equal_separate_rows():
    model = tiny_model()
    inputs = blank_inputs()
    stacked = torch.stack([inputs["position_ids"], inputs["block_position_ids"]], dim=1)
    with torch.no_grad():
        separate = model(**inputs).logits
        together = model(inputs["input_ids"], position_ids=stacked, prefix_length=inputs["prefix_length"]).logits
    torch.testing.assert_close(together, separate, atol=0, rtol=0)


def test_block_positions_change_the_logits():
    model = tiny_model()
    inputs = blank_inputs()
    without_blocks = {**inputs, "block_position_ids": torch.zeros_like(inputs["block_position_ids"])}
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits, model(**without_blocks).logits, atol=1e-3)


def test_inputs_embeds_give_the_same_logits_as_input_ids():
    model = tiny_model()
    inputs = blank_inputs()
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with torch.no_grad():
        from_ids = model(**inputs).logits
        from_embeds = model(**{**inputs, "input_ids": None}, inputs_embeds=embeds).logits
    torch.testing.assert_close(from_embeds, from_ids, atol=0, rtol=0)


def test_save_and_load_round_trip_is_bit_exact(tmp_path):
    model = tiny_model()
    inputs = blank_inputs()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, glm_hf.GLMForConditionalGeneration)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name
    assert reloaded.lm_head.weight.data_ptr() == reloaded.glm.word_embeddings.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reloaded(**inputs).logits)


def test_auto_classes_resolve_the_glm_blocklm_model_type(tmp_path):
    config = tiny_config()
    assert isinstance(AutoConfig.for_model("glm_blocklm"), glm_hf.GLMConfig)
    assert isinstance(AutoModel.from_config(copy.deepcopy(config)), glm_hf.GLMModel)
    assert isinstance(AutoModelForCausalLM.from_config(copy.deepcopy(config)), glm_hf.GLMForConditionalGeneration)
    glm_hf.GLMModel(config).save_pretrained(tmp_path)
    assert isinstance(AutoModel.from_pretrained(tmp_path), glm_hf.GLMModel)


def test_default_attention_is_sdpa():
    model = glm_hf.GLMForConditionalGeneration(tiny_config())
    assert model.config._attn_implementation == "sdpa"


def test_gelu_is_the_tanh_approximation_of_the_original():
    model = tiny_model()
    activation = model.glm.layers[0].mlp.act_fn
    x = torch.linspace(-6, 6, 1001)
    original = 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))
    torch.testing.assert_close(activation(x), original, atol=1e-6, rtol=0)
    exact = torch.nn.functional.gelu(x)
    assert (activation(x) - exact).abs().max() > 1e-4  # the erf GELU would be a different model


def test_loss_is_not_shifted_and_ignores_minus_100():
    model = tiny_model()
    inputs = blank_inputs()
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 9:] = torch.randint(7, 96, (2, 4))
    with torch.no_grad():
        output = model(**inputs, labels=labels)
    kept = labels != -100
    expected = torch.nn.functional.cross_entropy(output.logits[kept], labels[kept])
    torch.testing.assert_close(output.loss, expected)
    assert glm_hf.GLMForConditionalGeneration.accepts_loss_kwargs is False


def test_gradient_checkpointing_gives_the_same_gradients():
    inputs = blank_inputs()
    labels = inputs["input_ids"].clone()
    gradients = []
    for checkpointing in (False, True):
        model = tiny_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, embedding_dropout_prob=0.0)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(**inputs, labels=labels).loss.backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, atol=1e-6, rtol=0, msg=name)


def test_output_hidden_states_and_attentions():
    model = tiny_model("eager")
    inputs = blank_inputs()
    with torch.no_grad():
        output = model(**inputs, output_hidden_states=True, output_attentions=True)
    assert len(output.hidden_states) == model.config.num_hidden_layers + 1
    assert len(output.attentions) == model.config.num_hidden_layers
    assert output.attentions[0].shape == (2, 4, 13, 13)
    # Part A rows never attend to Part B columns.
    assert output.attentions[0][:, :, :9, 9:].abs().max() == 0


def test_return_dict_false_returns_a_tuple():
    model = tiny_model()
    with torch.no_grad():
        output = model(**blank_inputs(), return_dict=False, use_cache=False)
    assert isinstance(output, tuple) and output[0].shape == (2, 13, 96)


def test_too_long_input_names_max_position_embeddings():
    model = tiny_model(max_position_embeddings=8)
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        model(torch.randint(7, 96, (1, 9)))


def test_block_positions_on_a_model_without_block_table_is_an_error():
    model = tiny_model(block_position_encoding=False)
    assert model.glm.embed_positions.block_position_embeddings is None
    inputs = blank_inputs()
    with pytest.raises(ValueError, match="block_position_encoding=False"):
        model(**inputs)
    with torch.no_grad():
        assert model(inputs["input_ids"]).logits.shape == (2, 13, 96)


def test_bad_explicit_mask_shape_is_an_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="4-D attention_mask"):
        model(torch.randint(7, 96, (1, 5)), attention_mask=torch.ones(1, 1, 5, 4, dtype=torch.bool))


def test_output_projections_use_the_scaled_init():
    torch.manual_seed(0)
    config = tiny_config(hidden_size=256, num_hidden_layers=8, initializer_range=0.02)
    model = glm_hf.GLMModel(config)
    block = model.layers[0]
    scaled = 0.02 / math.sqrt(2 * 8)
    assert abs(block.attention.query_key_value.weight.std().item() - 0.02) < 0.002
    assert abs(block.attention.dense.weight.std().item() - scaled) < 0.001
    assert abs(block.mlp.dense_4h_to_h.weight.std().item() - scaled) < 0.001
    assert block.attention.dense.bias.abs().max() == 0


def test_a_float_mask_in_the_original_one_zero_convention_is_refused():
    model = tiny_model()
    ones_and_zeros = torch.tril(torch.ones(1, 1, 5, 5))
    with pytest.raises(ValueError, match="additive"):
        model(torch.randint(7, 96, (1, 5)), attention_mask=ones_and_zeros)
    with torch.no_grad():
        as_bool = model(torch.randint(7, 96, (1, 5)), attention_mask=ones_and_zeros > 0).logits
    assert torch.isfinite(as_bool).all()


def test_chunked_prefill_on_a_static_cache_equals_the_dynamic_cache():
    """Part A split over two calls: the static cache's still-empty columns must stay hidden, as with DynamicCache."""
    from transformers import DynamicCache, StaticCache

    model = tiny_model()
    inputs = blank_inputs(batch_size=1)
    results = []
    for cache in (DynamicCache(config=model.config), StaticCache(config=model.config, max_cache_len=20)):
        pieces = []
        with torch.no_grad():
            for start, end in ((0, 5), (5, 13)):
                chunk = {key: inputs[key][:, start:end] for key in ("input_ids", "position_ids", "block_position_ids")}
                output = model(**chunk, prefix_length=inputs["prefix_length"], past_key_values=cache, use_cache=True)
                pieces.append(output.logits)
        results.append(torch.cat(pieces, dim=1))
    torch.testing.assert_close(results[1], results[0], atol=1e-5, rtol=0)
