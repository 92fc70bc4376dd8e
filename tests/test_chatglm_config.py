"""The original ChatGLM-6B config.json is read; other GLM generations and broken configs are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glm_hf.conversion.chatglm_config import read_chatglm_config
from glm_hf.conversion.checkpoint import CheckpointError

# The released THUDM/chatglm-6b config.json keys (values of the release).
RELEASE = {
    "architectures": ["ChatGLMModel"],
    "bos_token_id": 130004,
    "eos_token_id": 130005,
    "mask_token_id": 130000,
    "gmask_token_id": 130001,
    "pad_token_id": 3,
    "hidden_size": 4096,
    "inner_hidden_size": 16384,
    "layernorm_epsilon": 1e-05,
    "max_sequence_length": 2048,
    "model_type": "chatglm",
    "num_attention_heads": 32,
    "num_layers": 28,
    "position_encoding_2d": True,
    "torch_dtype": "float16",
    "use_cache": True,
    "vocab_size": 130528,
}


def write_config(folder: Path, config: object) -> Path:
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_release_config_is_read(tmp_path: Path) -> None:
    assert read_chatglm_config(write_config(tmp_path, RELEASE)) == RELEASE


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"multi_query_attention": True, "padded_vocab_size": 65024}, r"ChatGLM2/3-6B or GLM-4.*GLM-4 is native"),
        ({"model_type": "glm4"}, r"model_type 'glm4'.*GLM-4 is native in transformers"),
        ({"model_type": None}, r"model_type None"),
        ({"quantization_bit": 4}, r"quantization_bit 4.*bitsandbytes"),
    ],
)
def test_other_generations_are_refused_naming_what_is_converted(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message) as error:
        read_chatglm_config(write_config(tmp_path, {**RELEASE, **changes}))
    assert str(tmp_path / "config.json") in str(error.value)
    assert "ChatGLM-6B (THUDM/chatglm-6b" in str(error.value) or "quantization_bit" in str(error.value)


def test_missing_key_is_named(tmp_path: Path) -> None:
    config = {key: value for key, value in RELEASE.items() if key != "gmask_token_id"}
    with pytest.raises(CheckpointError, match=r"lacks \['gmask_token_id'\]"):
        read_chatglm_config(write_config(tmp_path, config))


def test_unreadable_and_absent_configs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        read_chatglm_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable JSON config"):
        read_chatglm_config(tmp_path)
    write_config(tmp_path, [1, 2])
    with pytest.raises(CheckpointError, match="JSON list, not an object"):
        read_chatglm_config(tmp_path)
