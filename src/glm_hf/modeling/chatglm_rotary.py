"""ChatGLM-6B rotary position embedding: 2-D (each head's halves by position and block position) or 1-D.

The original keeps `inv_freq` in fp16 (`inv_freq.half()`) and, once the model is cast to float32, computes the angles
in float32 from those rounded frequencies; this module rounds the same way so float32 logits match. Rotation is the
NeoX `rotate_half` form (first and second half of the rotated dimensions swapped), base 10000.
"""

from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """`[x1, x2] -> [-x2, x1]` on the last dimension (NeoX layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class ChatGLMRotaryEmbedding(nn.Module):
    """Rotates query and key `[B, heads, T, head_dim]` by ChatGLM positions (`[B, 2, T]` if 2-D, else `[B, T]`)."""

    def __init__(self, head_dim: int, position_encoding_2d: bool = True, base: float = 10000.0) -> None:
        super().__init__()
        self.position_encoding_2d = position_encoding_2d
        rotary_dim = head_dim // 2 if position_encoding_2d else head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
        # fp16-rounded as the original stores it; not in the state dict (the original ignores it on load too).
        self.register_buffer("inv_freq", inv_freq.half().float(), persistent=False)

    def _rotate(self, states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate `states` `[B, heads, T, d]` by `positions` `[B, T]`."""
        freqs = positions.unsqueeze(-1).to(self.inv_freq.dtype) * self.inv_freq  # [B, T, d/2]
        angles = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # [B, 1, T, d]
        cos, sin = angles.cos().to(states.dtype), angles.sin().to(states.dtype)
        return states * cos + rotate_half(states) * sin

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the rotated `(query, key)`."""
        if not self.position_encoding_2d:
            return self._rotate(query, position_ids), self._rotate(key, position_ids)
        positions, block_positions = position_ids[:, 0], position_ids[:, 1]
        rotated = []
        for states in (query, key):
            first, second = states.chunk(2, dim=-1)
            rotated.append(torch.cat((self._rotate(first, positions), self._rotate(second, block_positions)), dim=-1))
        return rotated[0], rotated[1]
