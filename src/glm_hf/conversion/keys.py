"""The key-renaming table between the original GLM state dict and `GLMForConditionalGeneration`."""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

# One table, read in both directions: original backbone names (no prefix, as in the released `module` dicts) and
# glm-hf names. `{field}` stands for the part of the name given by FIELDS; it is copied across unchanged.
KEY_TABLE: list[tuple[str, str]] = [
    ("word_embeddings.weight", "glm.word_embeddings.weight"),
    ("transformer.position_embeddings.weight", "glm.embed_positions.position_embeddings.weight"),
    ("transformer.block_position_embeddings.weight", "glm.embed_positions.block_position_embeddings.weight"),
    ("transformer.layers.{layer}.{parameter}", "glm.layers.{layer}.{parameter}"),
    ("transformer.final_layernorm.{end}", "glm.final_layernorm.{end}"),
]
FIELDS = {
    "layer": r"\d+",
    "parameter": r"(?:input_layernorm|post_attention_layernorm|attention\.query_key_value|attention\.dense"
    r"|mlp\.dense_h_to_4h|mlp\.dense_4h_to_h)\.(?:weight|bias)",
    "end": r"(?:weight|bias)",
}


def _pattern(template: str) -> re.Pattern[str]:
    """A template as a full-match regex whose `{field}`s are named groups."""
    pieces = re.split(r"\{(\w+)\}", template)
    regex = "".join(
        re.escape(piece) if i % 2 == 0 else f"(?P<{piece}>{FIELDS[piece]})" for i, piece in enumerate(pieces)
    )
    return re.compile(regex)


ORIGINAL_TO_HF = [(_pattern(original), hf) for original, hf in KEY_TABLE]
HF_TO_ORIGINAL = [(_pattern(hf), original) for original, hf in KEY_TABLE]


BACKBONE_ANCHOR = "word_embeddings.weight"


def _rename(key: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in table:
        match = pattern.fullmatch(key)
        if match:
            return template.format(**match.groupdict())
    return None


def original_to_hf_key(key: str) -> str | None:
    """The glm-hf name of an original backbone key, or None when the table does not know it."""
    return _rename(key, ORIGINAL_TO_HF)


def hf_to_original_key(key: str) -> str | None:
    """The original name of a glm-hf backbone key, or None when it has none (e.g. the tied `lm_head.weight`)."""
    return _rename(key, HF_TO_ORIGINAL)


def original_to_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a backbone state dict; raises on keys the table does not know."""
    unknown = sorted(key for key in state_dict if original_to_hf_key(key) is None)
    if unknown:
        raise KeyError(f"Keys that are not part of a GLM backbone: {', '.join(unknown)}")
    return {original_to_hf_key(key): tensor for key, tensor in state_dict.items()}


def find_backbone(keys: Iterable[str]) -> tuple[str, dict[str, str], list[str]]:
    """Split a checkpoint's keys into the GLM backbone and the rest.

    Returns the backbone's prefix ("" for released files, "glm." for THUDM's Hub files, a wrapper's attribute for
    fine-tuned models), a map original name -> key in the file, and the keys left out (task heads, prompt
    encoders, unused extras). Raises `ValueError` when there is no backbone or it holds keys the table does not know.
    """
    keys = list(keys)
    anchors = [key for key in keys if key.endswith(BACKBONE_ANCHOR)]
    prefixes = [anchor[: -len(BACKBONE_ANCHOR)] for anchor in anchors]
    prefixes = [prefix for prefix in prefixes if f"{prefix}transformer.final_layernorm.weight" in keys]
    if len(prefixes) != 1:
        found = ", ".join(anchors) or "none"
        raise ValueError(
            "Not a GLM checkpoint: expected exactly one `[prefix]word_embeddings.weight` with "
            f"`[prefix]transformer.final_layernorm.weight` beside it (word embeddings found: {found})."
        )
    prefix = prefixes[0]
    backbone: dict[str, str] = {}
    unknown, left_out = [], []
    for key in keys:
        name = key[len(prefix) :] if key.startswith(prefix) else None
        if name is not None and original_to_hf_key(name) is not None:
            backbone[name] = key
        elif name is not None and name.startswith("transformer."):
            unknown.append(key)
        else:
            left_out.append(key)
    if unknown:
        raise ValueError(
            f"Unknown GLM backbone keys (an architecture glm-hf does not support?): {', '.join(sorted(unknown))}"
        )
    return prefix, backbone, left_out
