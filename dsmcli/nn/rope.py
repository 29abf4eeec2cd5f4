"""Rotary positional embedding with interleaved pairs (FORMAT.md §3.3).

Pair ``i`` of a head vector is ``(x[2i], x[2i+1])``; it is rotated by ``p * f_i`` with
``f_i = max_period ** (-2i / D)`` at absolute position ``p``. Angles and the rotation are computed
in float32 and the result is cast back to the input dtype. Positions are per batch slot, so slots
that started at different times rotate independently.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def rope_frequencies(head_dim: int, max_period: float, device: torch.device | str | None = None) -> Tensor:
    """``[D/2]`` float32 frequencies ``max_period ** (-2i / D)``."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    index = torch.arange(head_dim // 2, device=device, dtype=torch.float32)
    return torch.exp(index * (-2.0 * math.log(max_period) / head_dim))


def rope_angles(positions: Tensor, head_dim: int, max_period: float) -> tuple[Tensor, Tensor]:
    """``(cos, sin)`` of the rotation angles, each ``[B, 1, T, D/2]`` float32, for positions ``[B, T]``.

    Compute them once per step and share them between layers with :func:`rotate`.
    """
    freqs = rope_frequencies(head_dim, max_period, positions.device)
    angles = positions.to(torch.float32)[:, None, :, None] * freqs
    return torch.cos(angles), torch.sin(angles)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the interleaved pairs of ``x`` ``[B, H, T, D]`` by precomputed angles ``[B, 1, T, D/2]``."""
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    out = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


def apply_rope(q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor, max_period: float) -> tuple[Tensor, Tensor]:
    """Rotate queries ``q`` ``[B, H, T, D]`` at positions ``q_pos`` ``[B, T]`` and keys ``k`` ``[B, H, S, D]``
    at positions ``k_pos`` ``[B, S]`` (absolute, per batch slot). Returns ``(q, k)`` in their input dtype."""
    head_dim = q.shape[-1]
    if k.shape[-1] != head_dim:
        raise ValueError(f"query head dim {head_dim} != key head dim {k.shape[-1]}")
    q_cos, q_sin = rope_angles(q_pos, head_dim, max_period)
    if k_pos is q_pos:
        k_cos, k_sin = q_cos, q_sin
    else:
        k_cos, k_sin = rope_angles(k_pos, head_dim, max_period)
    return rotate(q, q_cos, q_sin), rotate(k, k_cos, k_sin)
