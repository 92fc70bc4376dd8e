"""GLMConfig: fields, presets of the released shapes, serialisation."""

from __future__ import annotations

import re

import pytest
import torch

import glm_hf
from glm_hf.modeling.configuration_glm import PRESETS

# Parameter counts of the released models in millions, as the GLM README rounds them, with a 5% margin
# (GLM-RoBERTa-Large has RoBERTa-Large's 355M).
RELEASED_SIZES_M = {"glm-base": 110, "glm-large": 335, "glm-roberta-large": 355, "glm-2b": 2000, "glm-10b": 10000}


def test_defaults_are_glm_large_with_the_bert_vocabulary():
    config = glm_hf.GLMConfig()
    assert config.model_type == "glm_blocklm"
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (24, 1024, 16)
    assert config.intermediate_size == 4096 and config.max_position_embeddings == 513
    assert config.tie_word_embeddings and config.use_cache and config.block_position_encoding
    assert (config.pad_token_id, config.eos_token_id, config.sop_token_id, config.eop_token_id) == (0, 0, 30522, 30523)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_have_head_size_64_and_one_extra_position_row(name):
    config = glm_hf.GLMConfig.from_preset(name)
    layers, hidden, heads, vocab, max_length, _ = PRESETS[name]
    assert config.head_dim == 64
    assert config.max_position_embeddings == max_length + 1
    assert config.vocab_size == vocab and config.num_hidden_layers == layers
    for key, value in config.to_dict().items():
        if key.endswith("_token_id") and value is not None:
            assert 0 <= value < vocab, key


@pytest.mark.parametrize("name", sorted(RELEASED_SIZES_M))
def test_presets_match_the_released_parameter_counts(name):
    with torch.device("meta"):
        model = glm_hf.GLMModel(glm_hf.GLMConfig.from_preset(name))
    millions = sum(parameter.numel() for parameter in model.parameters()) / 1e6
    assert abs(millions - RELEASED_SIZES_M[name]) / RELEASED_SIZES_M[name] < 0.05, millions


def test_glm_10b_chinese_shares_the_gmask_and_eop_ids():
    config = glm_hf.GLMConfig.from_preset("glm-10b-chinese")
    assert config.gmask_token_id == config.eop_token_id == 50007
    assert glm_hf.GLMConfig.from_preset("glm-large-chinese").gmask_token_id == 50009


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="glm-10b"):
        glm_hf.GLMConfig.from_preset("glm-huge")


def test_hidden_size_must_divide_into_heads():
    with pytest.raises(Exception, match="multiple of num_attention_heads"):
        glm_hf.GLMConfig(hidden_size=100, num_attention_heads=16)


def test_round_trip_through_json(tmp_path):
    config = glm_hf.GLMConfig.from_preset("glm-2b", hidden_dropout_prob=0.0)
    config.save_pretrained(tmp_path)
    reloaded = glm_hf.GLMConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()


def test_chatglm_6b_preset_has_the_released_parameter_count():
    """6.17B parameters (THUDM/chatglm-6b), the head tied to the word embeddings as the original loads it."""
    config = glm_hf.GLMConfig.from_preset("chatglm-6b")
    with torch.device("meta"):
        model = glm_hf.GLMForConditionalGeneration(config)
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == 6.17
    assert config.position_embedding_type == "rotary" and config.positions_from_ids and config.shifted_loss


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"position_embedding_type": "alibi"}, "position_embedding_type='alibi'"),
        ({"position_embedding_type": "rotary", "hidden_size": 36, "num_attention_heads": 6}, "multiple of 4"),
        ({"deepnorm_alpha": 0.0}, "deepnorm_alpha=0.0"),
        ({"positions_from_ids": True, "gmask_token_id": None}, "gmask_token_id"),
    ],
)
def test_chatglm_switches_refuse_values_no_model_runs_with(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        glm_hf.GLMConfig(**values)
