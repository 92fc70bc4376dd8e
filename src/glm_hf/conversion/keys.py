"""The key-renaming table between the original GLM state dict and `GLMForConditionalGeneration`."""

from __future__ import annotations

import re

import torch

# Original names (no prefix, as in the released `module` dicts) -> glm-hf names. Layer internals keep their names.
ORIGINAL_TO_HF: list[tuple[str, str]] = [
    (r"^word_embeddings\.weight$", "glm.word_embeddings.weight"),
    (r"^transformer\.position_embeddings\.weight$", "glm.embed_positions.position_embeddings.weight"),
    (r"^transformer\.block_position_embeddings\.weight$", "glm.embed_positions.block_position_embeddings.weight"),
    (r"^transformer\.layers\.(\d+)\.(.+)$", r"glm.layers.\1.\2"),
    (r"^transformer\.final_layernorm\.(weight|bias)$", r"glm.final_layernorm.\1"),
]


def original_to_hf_key(key: str) -> str | None:
    """The glm-hf name of an original key, or None when the key is not part of the backbone."""
    for pattern, replacement in ORIGINAL_TO_HF:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def original_to_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a backbone state dict; raises on keys the table does not know."""
    renamed: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        new_key = original_to_hf_key(key)
        if new_key is None:
            unknown.append(key)
        else:
            renamed[new_key] = tensor
    if unknown:
        raise KeyError(f"Keys that are not part of a GLM backbone: {', '.join(sorted(unknown))}")
    return renamed
