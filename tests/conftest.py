"""Shared helpers: tiny GLM configurations and random models (no download, seconds on a CPU)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

import glm_hf

# Real vocabulary files and corpora (not ours): `$GLM_HF_ASSETS`, default `../shared/assets` beside the repository.
ASSETS = Path(os.environ.get("GLM_HF_ASSETS", Path(__file__).resolve().parents[1].parent / "shared" / "assets"))

# Command tokens of the tiny test vocabulary, in the BERT family's arrangement (pad doubles as eos).
TINY_TOKEN_IDS = {
    "pad_token_id": 0,
    "eos_token_id": 0,
    "bos_token_id": 1,
    "cls_token_id": 1,
    "sep_token_id": 2,
    "mask_token_id": 3,
    "unk_token_id": 4,
    "sop_token_id": 5,
    "eop_token_id": 6,
}


# The tiny models' shape: 2 layers, 64 wide, 4 heads, 96 tokens; `initializer_range` large enough for
# non-degenerate outputs.
TINY_SHAPE: dict[str, Any] = {
    "vocab_size": 96,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "initializer_range": 0.3,
}


def tiny_config(**overrides: Any) -> glm_hf.GLMConfig:
    """A tiny GLM (`TINY_SHAPE`) with 65 position rows."""
    values: dict[str, Any] = {**TINY_SHAPE, "max_position_embeddings": 65, **TINY_TOKEN_IDS}
    values.update(overrides)
    return glm_hf.GLMConfig(**values)


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Checkpoint the blocks: `activation_checkpointing_enable` from transformers 5.23 on, which deprecates the older
    `gradient_checkpointing_enable` (the only name before 5.23)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def tiny_model(
    attn_implementation: str = "sdpa", seed: int = 0, **overrides: Any
) -> glm_hf.GLMForConditionalGeneration:
    """A random tiny `GLMForConditionalGeneration` in eval mode."""
    torch.manual_seed(seed)
    return glm_hf.GLMForConditionalGeneration._from_config(
        tiny_config(**overrides), attn_implementation=attn_implementation
    ).eval()


def tiny_chatglm(block_position_encoding: bool = True) -> glm_hf.GLMForConditionalGeneration:
    """A random tiny ChatGLM (`TINY_SHAPE`; rotary positions read from the ids, [gMASK] 90, [sop] 5), 2-D or 1-D
    positions."""
    config = glm_hf.GLMConfig.from_preset(
        "chatglm-6b",
        **TINY_SHAPE,
        intermediate_size=256,
        max_position_embeddings=64,
        block_position_encoding=block_position_encoding,
        bos_token_id=5,
        eos_token_id=6,
        sop_token_id=5,
        eop_token_id=6,
        mask_token_id=89,
        gmask_token_id=90,
        smask_token_id=91,
    )
    torch.manual_seed(0)
    return glm_hf.GLMForConditionalGeneration._from_config(config, attn_implementation="sdpa").eval()


def blank_inputs(batch_size: int = 2, part_a: int = 9, part_b: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    """A GLM batch with one blank per sample: Part A (random ids, a [MASK]) then [sop] + Part B tokens."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(7, 96, (batch_size, part_a + part_b), generator=generator)
    mask_index = torch.randint(1, part_a - 1, (batch_size,), generator=generator)
    input_ids[torch.arange(batch_size), mask_index] = TINY_TOKEN_IDS["mask_token_id"]
    input_ids[:, part_a] = TINY_TOKEN_IDS["sop_token_id"]
    position_ids = torch.arange(part_a + part_b).repeat(batch_size, 1)
    position_ids[:, part_a:] = mask_index[:, None]
    block_position_ids = torch.zeros_like(position_ids)
    block_position_ids[:, part_a:] = torch.arange(1, part_b + 1)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "block_position_ids": block_position_ids,
        "prefix_length": torch.full((batch_size,), part_a),
    }


TINY_WORDS = (
    "the a of and to in is was it that he she they we his her on with for as at by from this not but "
    "king queen house river stone light night day bird tree road ship door hand word time man child "
    "sees walks holds finds opens keeps reads writes knows loves old new long small dark cold green quiet "
    ", . ! ? ;"
).split()


def tiny_word_tokenizer() -> Any:
    """A whitespace word-level tokenizer over `TINY_WORDS` with the command tokens at `TINY_TOKEN_IDS` (and
    [gMASK] 7, [sMASK] 8): fits `tiny_config`'s 96 rows, needs no vocabulary file."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "<|startofpiece|>", "<|endofpiece|>", "[gMASK]"]
    specials.append("[sMASK]")
    vocab = {token: index for index, token in enumerate(specials + list(TINY_WORDS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        eos_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        unk_token="[UNK]",
        additional_special_tokens=specials[5:],
    )


@pytest.fixture(autouse=True)
def _deterministic_threads() -> None:
    torch.manual_seed(0)
