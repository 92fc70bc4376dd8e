"""The ORIGINAL ChatGLM-6B reference fixture loads and agrees with itself (issue 18).

`fixtures/original_chatglm_reference.{json.gz,safetensors}` come from `fixtures/make_original_chatglm_reference.py`
(the original modeling_chatglm.py on tiny random weights). These tests check the files only: configs, weight shapes,
case tensors, and relations that follow from the original's code (tied lm_head, greedy scores, the shifted loss);
comparing the port against them is for the port's own tests.
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glm_hf.conversion.chatglm_config import read_chatglm_config

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = json.loads(gzip.decompress((FIXTURES / "original_chatglm_reference.json.gz").read_bytes()))
TENSORS = load_file(str(FIXTURES / "original_chatglm_reference.safetensors"))
MODELS = FIXTURE["models"]
CASES = FIXTURE["cases"]

CONFIG_KEYS = {
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "inner_hidden_size",
    "vocab_size",
    "max_sequence_length",
    "layernorm_epsilon",
    "position_encoding_2d",
    "mask_token_id",
    "gmask_token_id",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "pre_seq_len",
    "prefix_projection",
    "use_cache",
}


def expected_weight_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The original ChatGLMForConditionalGeneration state_dict shapes for `config`."""
    hidden, inner, vocab = config["hidden_size"], config["inner_hidden_size"], config["vocab_size"]
    heads, layers = config["num_attention_heads"], config["num_layers"]
    rotary = hidden // heads // (2 if config["position_encoding_2d"] else 1)
    shapes: dict[str, tuple[int, ...]] = {"transformer.word_embeddings.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"transformer.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "input_layernorm.bias": (hidden,),
            p + "attention.rotary_emb.inv_freq": (rotary // 2,),
            p + "attention.query_key_value.weight": (3 * hidden, hidden),
            p + "attention.query_key_value.bias": (3 * hidden,),
            p + "attention.dense.weight": (hidden, hidden),
            p + "attention.dense.bias": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.bias": (hidden,),
            p + "mlp.dense_h_to_4h.weight": (inner, hidden),
            p + "mlp.dense_h_to_4h.bias": (inner,),
            p + "mlp.dense_4h_to_h.weight": (hidden, inner),
            p + "mlp.dense_4h_to_h.bias": (hidden,),
        }
    shapes |= {"transformer.final_layernorm.weight": (hidden,), "transformer.final_layernorm.bias": (hidden,)}
    if config["pre_seq_len"] is not None:
        prefix_width = layers * 2 * hidden
        if config["prefix_projection"]:
            shapes |= {
                "transformer.prefix_encoder.embedding.weight": (config["pre_seq_len"], hidden),
                "transformer.prefix_encoder.trans.0.weight": (hidden, hidden),
                "transformer.prefix_encoder.trans.0.bias": (hidden,),
                "transformer.prefix_encoder.trans.2.weight": (prefix_width, hidden),
                "transformer.prefix_encoder.trans.2.bias": (prefix_width,),
            }
        else:
            shapes["transformer.prefix_encoder.embedding.weight"] = (config["pre_seq_len"], prefix_width)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def weights(model: str) -> dict[str, torch.Tensor]:
    prefix = f"{model}/weights/"
    return {key[len(prefix) :]: value.float() for key, value in TENSORS.items() if key.startswith(prefix)}


def case_tensor(case: str, name: str) -> torch.Tensor:
    return TENSORS[CASES[case]["tensors"][name]]


def test_files_are_small() -> None:
    size = sum((FIXTURES / f"original_chatglm_reference.{ext}").stat().st_size for ext in ("json.gz", "safetensors"))
    assert size < 1_500_000


@pytest.mark.parametrize("model", sorted(MODELS))
def test_config_has_the_released_keys_and_is_read_by_the_port(model: str, tmp_path: Path) -> None:
    config = MODELS[model]["config"]
    assert CONFIG_KEYS <= set(config)
    assert config["model_type"] == "chatglm"
    assert {k: config[k] for k in FIXTURE["token_ids"]} == FIXTURE["token_ids"]
    assert "tie_word_embeddings" not in config  # as the released config.json: the PretrainedConfig default (True)
    assert MODELS[model]["config_to_dict"]["tie_word_embeddings"] is True
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert read_chatglm_config(tmp_path) == config


@pytest.mark.parametrize("model", sorted(MODELS))
def test_weights_have_the_original_keys_and_shapes(model: str) -> None:
    found = weights(model)
    assert sorted(found) == sorted(MODELS[model]["weight_keys"])  # safetensors sorts its keys
    expected = expected_weight_shapes(MODELS[model]["config"])
    assert {key: tuple(value.shape) for key, value in found.items()} == expected
    # inv_freq as the original keeps it: 1 / 10000 ** (arange(0, dim, 2) / dim), rounded to float16.
    dim = 2 * expected["transformer.layers.0.attention.rotary_emb.inv_freq"][0]
    inv_freq = (1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))).half().float()
    assert torch.equal(found["transformer.layers.0.attention.rotary_emb.inv_freq"], inv_freq)
    tied = torch.equal(found["lm_head.weight"], found["transformer.word_embeddings.weight"])
    assert tied == MODELS[model]["lm_head_file_equals_word_embeddings"] == (model != "untied_lm_head")
    assert MODELS[model]["lm_head_tied_on_load"] is True


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_tensors_fit_the_config(name: str) -> None:
    case = CASES[name]
    config = MODELS[case["model"]]["config"]
    assert set(case["tensors"]) and all(key in TENSORS for key in case["tensors"].values())
    input_ids = torch.tensor(case["inputs"]["input_ids"])
    batch, seq = input_ids.shape
    vocab, hidden, layers = config["vocab_size"], config["hidden_size"], config["num_layers"]
    if "input_ids" in case["tensors"]:
        assert torch.equal(case_tensor(name, "input_ids"), input_ids)
    if case["kind"] == "generate":
        sequences, scores = case_tensor(name, "sequences"), case_tensor(name, "scores")
        assert sequences.tolist() == case["inputs"]["sequences"]
        assert torch.equal(sequences[:, :seq], input_ids)
        steps = sequences.shape[1] - seq
        assert steps == 8 and scores.shape == (steps, batch, vocab)
        assert torch.equal(scores.argmax(-1).T, sequences[:, seq:])  # greedy: each token is its step's argmax
        return
    logits, hidden_states = case_tensor(name, "logits"), case_tensor(name, "hidden_states")
    assert logits.shape == (batch, seq, vocab) and logits.dtype == torch.float32
    assert hidden_states.shape == (layers + 1, batch, seq, hidden)
    assert torch.isfinite(logits).all()
    if "position_ids" in case["tensors"]:
        shape = (batch, 2, seq) if config["position_encoding_2d"] else (batch, seq)
        assert case_tensor(name, "position_ids").shape == shape
    if "attention_mask" in case["tensors"]:
        mask = case_tensor(name, "attention_mask")
        assert mask.dtype == torch.bool and mask.shape == (batch, 1, seq, seq + (config["pre_seq_len"] or 0))
    # The loaded original ties lm_head to word_embeddings: logits = final hidden state @ embeddings.T.
    embeddings = weights(case["model"])["transformer.word_embeddings.weight"]
    torch.testing.assert_close(logits, hidden_states[-1] @ embeddings.T, rtol=1e-5, atol=1e-5)


def test_loss_is_the_shifted_mean_cross_entropy() -> None:
    for dim in ("2d", "1d"):
        name = f"loss_{dim}"
        logits, labels = case_tensor(name, "logits"), case_tensor(name, "labels")
        assert labels.tolist() == CASES[name]["inputs"]["labels"]
        expected = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].flatten()
        )
        torch.testing.assert_close(case_tensor(name, "loss"), expected)


def test_untied_file_lm_head_is_ignored_on_load() -> None:
    name = "forward_gmask_untied_lm_head"
    found = weights("untied_lm_head")
    final = case_tensor(name, "hidden_states")[-1]
    torch.testing.assert_close(case_tensor(name, "logits"), final @ found["transformer.word_embeddings.weight"].T)
    torch.testing.assert_close(case_tensor(name, "logits_constructed"), final @ found["lm_head.weight"].T)
    assert not torch.allclose(case_tensor(name, "logits"), case_tensor(name, "logits_constructed"))


def test_tokenizer_model_has_the_specials_at_the_top() -> None:
    spm = pytest.importorskip("sentencepiece")
    tokenizer = FIXTURE["tokenizer"]
    processor = spm.SentencePieceProcessor(model_proto=base64.b64decode(tokenizer["sentencepiece_model_base64"]))
    vocab = MODELS["chatglm2d"]["config"]["vocab_size"]
    assert processor.vocab_size() == vocab == len(tokenizer["pieces"])
    assert [processor.id_to_piece(i) for i in range(vocab)] == tokenizer["pieces"]
    ids = FIXTURE["token_ids"]
    assert processor.piece_to_id("<pad>") == ids["pad_token_id"]
    assert processor.piece_to_id("[MASK]") == ids["mask_token_id"]
    assert processor.piece_to_id("[gMASK]") == ids["gmask_token_id"]
    assert processor.piece_to_id("<sop>") == ids["bos_token_id"]
    assert processor.piece_to_id("<eop>") == ids["eos_token_id"]
