"""Merging and splitting Megatron model-parallel shards, exactly as Megatron split GLM.

`query_key_value` holds [Q_r; K_r; V_r] on each rank, so Q, K and V are each concatenated across ranks before
re-fusing; `word_embeddings` and `dense_h_to_4h` (weight and bias) are split on dim 0; the `attention.dense` and
`dense_4h_to_h` weights on dim 1; everything else (their biases, LayerNorms, position tables) is replicated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

FUSED_QKV = "fused_qkv"
REPLICATED = "replicated"

PARTITION_RULES: list[tuple[str, int | str]] = [
    (r"attention\.query_key_value\.(weight|bias)$", FUSED_QKV),
    (r"^word_embeddings\.weight$", 0),
    (r"mlp\.dense_h_to_4h\.(weight|bias)$", 0),
    (r"attention\.dense\.weight$", 1),
    (r"mlp\.dense_4h_to_h\.weight$", 1),
]


def partition_rule(name: str) -> int | str:
    """How the original key `name` is laid out over model-parallel ranks: a dim, FUSED_QKV or REPLICATED."""
    for pattern, rule in PARTITION_RULES:
        if re.search(pattern, name):
            return rule
    return REPLICATED


def merge_partitions(name: str, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """One full tensor from its per-rank parts (in rank order)."""
    if len(parts) == 1:
        return parts[0]
    rule = partition_rule(name)
    if rule == REPLICATED:
        for rank, part in enumerate(parts[1:], start=1):
            if part.shape != parts[0].shape or not torch.equal(part, parts[0]):
                raise ValueError(f"{name} should be identical on every model-parallel rank, but rank {rank} differs.")
        return parts[0]
    if rule == FUSED_QKV:
        for rank, part in enumerate(parts):
            if part.shape[0] % 3:
                raise ValueError(f"{name} on rank {rank} has {part.shape[0]} rows, not a multiple of 3 (Q;K;V).")
        thirds = [part.chunk(3, dim=0) for part in parts]
        return torch.cat([torch.cat([rank_parts[i] for rank_parts in thirds], dim=0) for i in range(3)], dim=0)
    other_dims = {tuple(s for d, s in enumerate(part.shape) if d != rule) for part in parts}
    if len(other_dims) != 1:
        shapes = ", ".join(str(tuple(part.shape)) for part in parts)
        raise ValueError(f"{name} has shard shapes that do not fit together along dim {rule}: {shapes}.")
    return torch.cat(list(parts), dim=rule)


def split_partitions(name: str, tensor: torch.Tensor, world_size: int) -> list[torch.Tensor]:
    """The per-rank parts of a full tensor, the inverse of `merge_partitions`."""
    if world_size == 1:
        return [tensor]
    rule = partition_rule(name)
    if rule == REPLICATED:
        return [tensor] * world_size
    dim = 0 if rule == FUSED_QKV else rule
    if rule == FUSED_QKV and tensor.shape[0] % 3:
        raise ValueError(f"{name} has {tensor.shape[0]} rows, not a multiple of 3 (Q;K;V).")
    size = tensor.shape[dim] // (3 if rule == FUSED_QKV else 1)
    if size % world_size:
        raise ValueError(f"{name} cannot be split over {world_size} ranks: {size} is not divisible by it.")
    if rule == FUSED_QKV:
        q, k, v = (third.chunk(world_size, dim=0) for third in tensor.chunk(3, dim=0))
        return [torch.cat([q[rank], k[rank], v[rank]], dim=0).clone() for rank in range(world_size)]
    return [part.clone() for part in tensor.chunk(world_size, dim=dim)]
