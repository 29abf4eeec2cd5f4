"""Attention masks from absolute positions, and masked scaled dot-product attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def context_mask(q_pos: Tensor, k_pos: Tensor, context: int | None) -> Tensor:
    """Boolean ``[B, 1, T, S]`` mask: True where key ``s`` is valid (``k_pos >= 0``) and
    ``0 <= q_pos - k_pos < context`` (no lower window if ``context`` is None).

    q_pos: ``[B, T]`` query positions; k_pos: ``[B, S]`` key positions (-1 = empty cell).
    """
    delta = q_pos[:, :, None] - k_pos[:, None, :]
    allowed = (k_pos[:, None, :] >= 0) & (delta >= 0)
    if context is not None:
        allowed = allowed & (delta < context)
    return allowed[:, None]


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Scaled dot-product attention with the default ``1/sqrt(D)`` scale.

    q: ``[B, H, T, D]``; k, v: ``[B, H, S, D]``; mask: bool ``[B, 1|H, T, S]`` (True = attend).
    Returns ``[B, H, T, D]``; a query row with no valid key gives zeros.
    """
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    has_key = mask.any(dim=-1, keepdim=True)
    return torch.where(has_key, out, torch.zeros((), dtype=out.dtype, device=out.device))
