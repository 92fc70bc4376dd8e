"""ChatGLM-6B rotary position embedding: 2-D (each head's halves by position and block position) or 1-D.

The original keeps `inv_freq` in fp16 (`inv_freq.half()`) and, once the model is cast to float32, computes the angles
in float32 from those rounded frequencies; this module rounds the same way so float32 logits match. Rotation is the
NeoX `rotate_half` form (first and second half of the rotated dimensions swapped), base 10000. The angles are
computed once per forward (`ChatGLMRotaryEmbedding`) and applied in every layer (`apply_rotary`).
"""

from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """`[x1, x2] -> [-x2, x1]` on the last dimension (NeoX layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, two_d: bool) -> torch.Tensor:
    """Rotate `states` `[B, heads, T, head_dim]` by the angles of `ChatGLMRotaryEmbedding` (`[B, 1, T, head_dim]`);
    2-D rotates each half of the head on its own (the first by position, the second by block position)."""
    if two_d:
        first, second = states.chunk(2, dim=-1)
        rotated = torch.cat((rotate_half(first), rotate_half(second)), dim=-1)
    else:
        rotated = rotate_half(states)
    return states * cos + rotated * sin


class ChatGLMRotaryEmbedding(nn.Module):
    """The rotation angles of ChatGLM positions: `(cos, sin)`, each `[B, 1, T, head_dim]`.

    2-D: the first half of a head's dimensions turns by the position, the second by the block position.
    """

    def __init__(self, head_dim: int, position_encoding_2d: bool = True, base: float = 10000.0) -> None:
        super().__init__()
        self.position_encoding_2d = position_encoding_2d
        self.rotary_dim = head_dim // 2 if position_encoding_2d else head_dim
        self.base = base
        # Not in the state dict (the original ignores it on load too): `_init_weights` fills it after loading.
        self.register_buffer("inv_freq", self.frequencies(), persistent=False)

    def frequencies(self) -> torch.Tensor:
        """`1 / base ** (2i / d)`, rounded through fp16 as the original stores it."""
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.rotary_dim, 2).float() / self.rotary_dim))
        return inv_freq.half().float()

    def _angles(self, positions: torch.Tensor) -> torch.Tensor:
        """`[B, T]` positions -> `[B, 1, T, rotary_dim]` angles (each frequency twice, NeoX layout)."""
        freqs = positions.unsqueeze(-1).to(self.inv_freq.dtype) * self.inv_freq
        return torch.cat((freqs, freqs), dim=-1).unsqueeze(1)

    def forward(
        self, position_ids: torch.Tensor, block_position_ids: torch.Tensor | None, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(cos, sin)` in `dtype` for positions `[B, T]` (and block positions `[B, T]` when 2-D)."""
        angles = self._angles(position_ids)
        if self.position_encoding_2d:
            if block_position_ids is None:
                block_position_ids = torch.zeros_like(position_ids)
            angles = torch.cat((angles, self._angles(block_position_ids)), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)
