"""Read and check the `config.json` of an original ChatGLM-6B folder (THUDM/chatglm-6b remote-code layout).

ChatGLM2-6B, ChatGLM3-6B and the GLM-4 remote-code releases also say `model_type "chatglm"` but are other
architectures (multi-query attention, RMSNorm, SwiGLU, 1-D rotary); they are recognised by their keys and refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError

# Keys the ChatGLM-6B config must hold (those its modeling code reads without a default that fits the release).
CHATGLM_6B_REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_attention_heads",
    "inner_hidden_size",
    "layernorm_epsilon",
    "max_sequence_length",
    "bos_token_id",
    "eos_token_id",
    "mask_token_id",
    "gmask_token_id",
    "pad_token_id",
)
# Keys only the later generations carry (ChatGLM2/3-6B, GLM-4 remote code).
LATER_GENERATION_KEYS = ("multi_query_attention", "padded_vocab_size", "ffn_hidden_size", "rmsnorm", "kv_channels")

NOT_CONVERTED = (
    "glm-hf converts the original GLM checkpoints (THUDM/GLM) and ChatGLM-6B (THUDM/chatglm-6b, model_type "
    "'chatglm' with inner_hidden_size and position_encoding_2d). GLM-4 is native in transformers "
    "(model_type 'glm' / 'glm4': load it with AutoModelForCausalLM, no conversion needed); ChatGLM2-6B and "
    "ChatGLM3-6B are served by their own Hub remote code (trust_remote_code=True) and not by this package."
)


def read_chatglm_config(folder: Path) -> dict[str, Any]:
    """Return the original ChatGLM-6B config of `folder` (its `config.json`), refusing other GLM generations.

    Raises `CheckpointError` naming the file and the key or model type at fault.
    """
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: no config.json; a ChatGLM-6B folder holds config.json beside its weights."
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not a readable JSON config ({error}).") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: the config is a JSON {type(config).__name__}, not an object.")
    model_type = config.get("model_type")
    if model_type != "chatglm":
        raise CheckpointError(f"{path}: model_type {model_type!r} is not ChatGLM-6B's 'chatglm'. {NOT_CONVERTED}")
    later = [key for key in LATER_GENERATION_KEYS if key in config]
    if later:
        raise CheckpointError(
            f"{path}: keys {later} belong to ChatGLM2/3-6B or GLM-4 (multi-query attention, RMSNorm), not "
            f"ChatGLM-6B. {NOT_CONVERTED}"
        )
    missing = [key for key in CHATGLM_6B_REQUIRED_KEYS if key not in config]
    if missing:
        raise CheckpointError(f"{path}: ChatGLM-6B config lacks {missing}; add them from the release's config.json.")
    if config.get("quantization_bit", 0):
        raise CheckpointError(
            f"{path}: quantization_bit {config['quantization_bit']} (a pre-quantized int4/int8 release) is not "
            "converted; convert the fp16 THUDM/chatglm-6b weights and quantize with transformers' bitsandbytes."
        )
    return config
