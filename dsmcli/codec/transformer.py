"""Mimi's encoder/decoder transformer (FORMAT.md §2.5): pre-norm, RoPE, causal window, GELU FFN, layer scale.

Layout ``[B, C, T]`` in and out (conv layout). Streaming keeps a ring KV cache of capacity ``context``
per layer (one :class:`StackedRingKVCache` for all layers, which write the same cells): a step writes
all its ``T`` keys before attending and masks by absolute position, which reproduces the reference
exactly, including that after the ring wraps the first query of a multi-step chunk can no longer see
its oldest allowed key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsmcli.codec.config import TransformerConfig
from dsmcli.nn import (
    StackedRingKVCache,
    attend,
    causal_attend,
    context_mask,
    make_norm,
    rope_rotation,
    rotate,
)

Rope = Tensor | None  # complex rotation factors [B|1, T, D/2], or None without positional embedding


@dataclass
class TransformerState:
    """ring: the KV caches of every layer; ``ring.end`` ``[B]`` is each slot's next absolute position."""

    ring: StackedRingKVCache

    def reset(self, mask: Tensor) -> None:
        self.ring.reset(mask)


def rotate_in_place(pairs: Tensor, rotation: Tensor) -> None:
    """Rotate the interleaved pairs of ``pairs`` ``[..., D]`` by complex ``rotation`` (broadcastable to
    ``[..., D/2]``), writing the result back into ``pairs`` (same values as :func:`dsmcli.nn.rotate`)."""
    if pairs.dtype == torch.float32:
        torch.view_as_complex(pairs.unflatten(-1, (-1, 2))).mul_(rotation)
    else:
        pairs.copy_(rotate(pairs, rotation.real, rotation.imag))


class SelfAttention(nn.Module):
    """Multi-head causal self-attention; weights under the released names ``in_proj_weight`` ``[3d, d]``
    (rows ``[q | k | v]``, each ``(head, head_dim)``) and ``out_proj.weight``; no biases."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        d = config.d_model
        self.num_heads = config.num_heads
        self.context = config.context
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.out_proj = nn.Linear(d, d, bias=False)

    def _qkv(self, x: Tensor, rope: Rope) -> Tensor:
        """``[B, T, d]`` → ``[B, T, 3, H, head_dim]`` (q, k, v; q and k rotated together)."""
        qkv = F.linear(x, self.in_proj_weight).unflatten(-1, (3, self.num_heads, -1))
        if rope is not None:
            rotate_in_place(qkv[:, :, :2], rope[:, :, None, None])  # [B, T, 1, 1, D/2]
        return qkv

    def _merge(self, out: Tensor) -> Tensor:
        """``[B, H, T, head_dim]`` → ``[B, T, d]``."""
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        """One shot over ``x`` ``[B, T, d]`` at positions ``0..T-1``."""
        q, k, v = self._qkv(x, rope).permute(2, 0, 3, 1, 4)  # each [B, H, T, D]
        return self._merge(causal_attend(q, k, v, self.context))

    def step(self, x: Tensor, rope: Rope, ring: StackedRingKVCache, index: int, cells: Tensor, mask: Tensor,
             active: Tensor | None) -> Tensor:
        """Streaming: ``x`` ``[B, T, d]`` at the claimed ring ``cells``; ``mask`` ``[B, 1, T, C]`` from the
        ring's positions. This layer's keys and values are stored before attending."""
        qkv = self._qkv(x, rope)
        ring.write(index, qkv[:, :, 1:], cells)
        keys, values = ring.layer(index)
        q = qkv[:, :, 0].transpose(1, 2)
        if active is None:  # every query sees at least its own, just written key: no empty rows to guard
            return self._merge(F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))
        return self._merge(attend(q, keys, values, mask))


class LayerScale(nn.Module):
    """Per-channel residual gain ``scale`` ``[d]``."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x


def add_scaled(x: Tensor, scale: nn.Module, update: Tensor) -> Tensor:
    """``x + scale(update)`` in one fused op when ``scale`` is a :class:`LayerScale`."""
    if isinstance(scale, LayerScale):
        return torch.addcmul(x, scale.scale, update)
    return x + update


class TransformerLayer(nn.Module):
    """``x += ls1 * attn(norm1(x))``; ``x += ls2 * linear2(gelu(linear1(norm2(x))))``."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        d = config.d_model
        self.self_attn = SelfAttention(config)
        self.norm1 = make_norm(config.norm, d)
        self.norm2 = make_norm(config.norm, d)
        self.linear1 = nn.Linear(d, config.dim_feedforward, bias=False)
        self.linear2 = nn.Linear(config.dim_feedforward, d, bias=False)
        scale = config.layer_scale
        self.layer_scale_1 = nn.Identity() if scale is None else LayerScale(d, scale)
        self.layer_scale_2 = nn.Identity() if scale is None else LayerScale(d, scale)

    def _feed_forward(self, x: Tensor) -> Tensor:
        return add_scaled(x, self.layer_scale_2, self.linear2(F.gelu(self.linear1(self.norm2(x)))))

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        x = add_scaled(x, self.layer_scale_1, self.self_attn(self.norm1(x), rope))
        return self._feed_forward(x)

    def step(self, x: Tensor, rope: Rope, ring: StackedRingKVCache, index: int, cells: Tensor, mask: Tensor,
             active: Tensor | None) -> Tensor:
        update = self.self_attn.step(self.norm1(x), rope, ring, index, cells, mask, active)
        return self._feed_forward(add_scaled(x, self.layer_scale_1, update))


class _LayerList(nn.Module):
    """Holds ``layers`` (released names ``….transformer.layers.{i}``)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_layers))


class MimiTransformer(nn.Module):
    """``[B, input_dimension, T]`` → ``[B, output_dimension, T]`` (projections only when dims differ)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.transformer = _LayerList(config)
        d = config.d_model
        self.input_proj = None if config.input_dimension == d else nn.Linear(config.input_dimension, d, bias=False)
        output = nn.Identity() if config.output_dimension == d else nn.Linear(d, config.output_dimension, bias=False)
        self.output_projs = nn.ModuleList([output])

    def _rope(self, positions: Tensor) -> Rope:
        if not self.config.rope:
            return None
        return rope_rotation(positions, self.config.head_dim, self.config.max_period)

    def _project_in(self, x: Tensor) -> Tensor:
        x = x.transpose(1, 2)
        return x if self.input_proj is None else self.input_proj(x)

    def _project_out(self, x: Tensor) -> Tensor:
        return self.output_projs[0](x).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """One shot over ``x`` ``[B, C, T]`` (positions ``0..T-1``)."""
        x = self._project_in(x)
        rope = self._rope(torch.arange(x.shape[1], device=x.device)[None])
        for layer in self.transformer.layers:
            x = layer(x, rope)
        return self._project_out(x)

    def init_state(self, batch_size: int) -> TransformerState:
        c = self.config
        if c.context is None:
            raise ValueError("streaming needs a finite attention context")
        weight = self.transformer.layers[0].self_attn.in_proj_weight
        return TransformerState(StackedRingKVCache.create(c.num_layers, batch_size, c.num_heads, c.context,
                                                          c.head_dim, weight.device, weight.dtype))

    def step(self, x: Tensor, state: TransformerState, active: Tensor | None = None) -> Tensor:
        """Streaming step over ``x`` ``[B, C, T]``; inactive slots keep their state."""
        x = self._project_in(x)
        ring = state.ring
        cells, q_pos = ring.claim(x.shape[1], active)
        rope = self._rope(q_pos)
        mask = context_mask(q_pos, ring.slot_positions, self.config.context)
        for index, layer in enumerate(self.transformer.layers):
            x = layer.step(x, rope, ring, index, cells, mask, active)
        return self._project_out(x)
