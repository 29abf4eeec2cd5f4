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


def causal_attend(q: Tensor, k: Tensor, v: Tensor, context: int | None, block: int = 1024) -> Tensor:
    """One-shot causal attention over whole sequences at positions ``0..T-1``, ``0 <= q - k < context``.

    q, k, v: ``[B, H, T, D]`` → ``[B, H, T, D]``. Queries are processed ``block`` at a time against
    only the keys their window can reach, so memory stays ``O(T * (block + context))``; up to
    ``block`` steps it is a single full-sequence call (bit-identical to unblocked attention).
    """
    steps = q.shape[2]
    if steps == 0:
        return torch.empty_like(q)
    positions = torch.arange(steps, device=q.device)[None]
    outputs = []
    for start in range(0, steps, block):
        stop = min(steps, start + block)
        first = 0 if context is None else max(0, start - context + 1)
        mask = context_mask(positions[:, start:stop], positions[:, first:stop], context)
        outputs.append(attend(q[:, :, start:stop], k[:, :, first:stop], v[:, :, first:stop], mask))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
