"""Sinusoidal position embeddings (cos block first, then sin block), FORMAT.md §3.6."""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_MAX_PERIOD = 10_000.0


def sin_embedding(positions: Tensor, dim: int, max_period: float = DEFAULT_MAX_PERIOD,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """``[..., dim]`` embedding of ``positions`` ``[...]``: ``[cos(p / P**(i/(h-1))), sin(...)]`` for
    ``i = 0..h-1``, ``h = dim // 2``, ``P = max_period``; computed in ``dtype``."""
    if dim % 2 or dim < 4:
        raise ValueError(f"sinusoidal embeddings need an even dim >= 4, got {dim}")
    half = dim // 2
    index = torch.arange(half, device=positions.device, dtype=dtype)
    period = torch.full((), max_period, device=positions.device, dtype=dtype)
    phase = positions.to(dtype)[..., None] / (period ** (index / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)
