"""ChatGLM-6B positions and attention visibility derived from the token ids alone (no padding mask given).

ChatGLM-6B prompts end with `[gMASK] <sop>` (or `[MASK] <sop>`): the context (every column before a row's first
`<sop>`) is bidirectional, `<sop>` and what follows is causal. Positions are the column index in the context; from
`<sop>` on they stay at the index of the row's [gMASK] (else [MASK]). With 2-D positions a second row counts the
block: 0 in the context, 1, 2, ... from `<sop>` on. With 1-D positions (`position_encoding_2d false`) only a [MASK]
row holds its positions at the mask's index; a [gMASK] row keeps counting the columns.

These functions import only torch so the model file can use them when its config says ChatGLM.
"""

from __future__ import annotations

import torch


def _first_index(input_ids: torch.Tensor, token_id: int | torch.Tensor, name: str) -> torch.Tensor:
    """Index of each row's first `token_id` (int, or `[B, 1]` per row) as `[B]`; raises naming rows lacking it."""
    found = input_ids == token_id
    missing = (~found.any(dim=-1)).nonzero().flatten().tolist()
    if missing:
        raise ValueError(
            f"ChatGLM positions: row(s) {missing} of input_ids hold no {name}; ChatGLM prompts end "
            "with `[gMASK] <sop>` (the tokenizer adds them), or pass position_ids and attention_mask explicitly."
        )
    return found.int().argmax(dim=-1)


def _mask_positions(
    input_ids: torch.Tensor, mask_token_id: int, gmask_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`([B] whether the row holds a [gMASK], [B] index of its first [gMASK], else of its first [MASK])`."""
    use_gmask = (input_ids == gmask_token_id).any(dim=-1)
    mask_ids = torch.where(use_gmask, gmask_token_id, mask_token_id).unsqueeze(-1)
    name = f"[gMASK] (id {gmask_token_id}) or [MASK] (id {mask_token_id})"
    return use_gmask, _first_index(input_ids, mask_ids, name)


def chatglm_context_lengths(input_ids: torch.Tensor, bos_token_id: int) -> torch.Tensor:
    """Number of context columns of each row: the index of its first `<sop>` (`bos_token_id`), shape `[B]`."""
    return _first_index(input_ids, bos_token_id, f"<sop> (id {bos_token_id})")


def chatglm_position_ids(
    input_ids: torch.Tensor,
    mask_token_id: int,
    gmask_token_id: int,
    bos_token_id: int,
    position_encoding_2d: bool = True,
) -> torch.Tensor:
    """Positions of `input_ids` `[B, T]` as the original ChatGLM-6B computes them when none are passed.

    Returns `[B, 2, T]` (position, block position) when `position_encoding_2d`, else `[B, T]`.
    """
    batch_size, seq_length = input_ids.shape
    columns = torch.arange(seq_length, device=input_ids.device).unsqueeze(0).expand(batch_size, -1)
    context_lengths = chatglm_context_lengths(input_ids, bos_token_id).unsqueeze(-1)
    use_gmask, mask_positions = _mask_positions(input_ids, mask_token_id, gmask_token_id)
    mask_positions = mask_positions.unsqueeze(-1)
    in_block = columns >= context_lengths
    if position_encoding_2d:
        position_ids = torch.where(in_block, mask_positions, columns)
        block_position_ids = torch.where(in_block, columns - context_lengths + 1, 0)
        return torch.stack((position_ids, block_position_ids), dim=1)
    return torch.where(in_block & ~use_gmask.unsqueeze(-1), mask_positions, columns)


def chatglm_visibility(input_ids: torch.Tensor, bos_token_id: int) -> torch.Tensor:
    """Boolean `[B, 1, T, T]` mask, True where a query row may attend a key column (the original's mask inverted).

    Every row sees the whole context (the columns before its first `<sop>`) and, causally, itself and what precedes.
    """
    seq_length = input_ids.shape[-1]
    columns = torch.arange(seq_length, device=input_ids.device)
    causal = columns.unsqueeze(-1) >= columns.unsqueeze(0)
    context = columns.view(1, 1, -1) < chatglm_context_lengths(input_ids, bos_token_id).view(-1, 1, 1)
    return (causal.unsqueeze(0) | context).unsqueeze(1)


def chatglm_step_position_ids(
    input_ids: torch.Tensor,
    mask_token_id: int,
    gmask_token_id: int,
    bos_token_id: int,
    position_encoding_2d: bool = True,
) -> torch.Tensor:
    """Positions of the last column of `input_ids` `[B, T]` for a decoding step, as the original's generation gives.

    2-D: `[B, 2, 1]`, the mask's index and the next block position (equal to the last column of
    `chatglm_position_ids`). 1-D: `[B, 1]`, the mask's index for [gMASK] rows too (unlike the prompt's positions).
    """
    if position_encoding_2d:
        return chatglm_position_ids(input_ids, mask_token_id, gmask_token_id, bos_token_id)[..., -1:]
    chatglm_context_lengths(input_ids, bos_token_id)  # the original refuses rows without <sop> here too
    return _mask_positions(input_ids, mask_token_id, gmask_token_id)[1][:, None]
