"""Mimi's encoder/decoder transformer (FORMAT.md §2.5): pre-norm, RoPE, causal window, GELU FFN, layer scale.

Layout ``[B, C, T]`` in and out (conv layout). Streaming keeps the stack's KV rings of capacity ``context``
(:class:`~dsmcli.nn.kv_rings.KVRings`, the LM's rings): a step claims its ``T`` cells once for every layer, writes
all its ``T`` keys before attending and masks by absolute position over the whole ring, which reproduces the
reference exactly, including that after the ring wraps the first query of a multi-step chunk can no longer see its
oldest allowed key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsmcli.codec.config import TransformerConfig
from dsmcli.codec.kernels import linear
from dsmcli.kernels import KernelChoice
from dsmcli.kernels.codec import mimi_transformer_op
from dsmcli.nn import (
    KVRings,
    NormKind,
    attend,
    causal_attend,
    context_mask,
    make_norm,
    rope_angles,
    rotate,
)
from dsmcli.nn.norms import LAYER_NORM_EPS

Rope = tuple[Tensor, Tensor] | None  # (cos, sin) [B|1, T, 1, 1, D/2] (for [B, T, 2, H, D] q|k), or None
Slots = tuple[Tensor, Tensor]  # ring cells and absolute positions [B, T] of a streaming step (KVRings.claim)


@dataclass
class TransformerState:
    """rings: every layer's KV ring (float32 or the model's dtype, scratch cell included); offset: ``[B]`` absolute
    position of each slot's next step (the positions the rings are claimed at)."""

    rings: KVRings
    offset: Tensor

    def reset(self, mask: Tensor) -> None:
        self.rings.reset(mask)
        self.offset.masked_fill_(mask, 0)


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
        self.kernels = KernelChoice.AUTO  # Mimi's CodecOptions.kernels (set when Mimi is built)

    def _qkv(self, x: Tensor, rope: Rope) -> tuple[Tensor, Tensor, Tensor]:
        """``[B, T, d]`` → q, k, v ``[B, H, T, head_dim]`` (q and k rotated, in one op each)."""
        qkv = linear(x, self.in_proj_weight, None, self.kernels).unflatten(-1, (3, self.num_heads, -1))  # [B,T,3,H,D]
        qk = qkv[:, :, :2] if rope is None else rotate(qkv[:, :, :2], *rope)
        return qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)

    def _merge(self, out: Tensor) -> Tensor:
        return linear(out.transpose(1, 2).flatten(2), self.out_proj.weight, None, self.kernels)

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        """One shot over ``x`` ``[B, T, d]`` at positions ``0..T-1``."""
        q, k, v = self._qkv(x, rope)
        return self._merge(causal_attend(q, k, v, self.context))

    def step(self, x: Tensor, rope: Rope, slots: Slots, rings: KVRings, layer: int, mask: Tensor | None,
             active: Tensor | None) -> tuple[Tensor, Tensor]:
        """Streaming: ``x`` ``[B, T, d]`` written at ``layer``'s ring ``slots``. Returns (output, mask) so later layers
        reuse the mask (every layer's ring holds the same positions): bool ``[B, 1, T, C]``, or with every
        slot active its additive float form, as SDPA would convert it (each query then sees at least its
        own key, so no empty row needs guarding)."""
        q, k, v = self._qkv(x, rope)
        rings.store(layer, slots[0], k, v)
        keys, values, k_pos = rings.ring(layer)
        if mask is None:
            mask = context_mask(slots[1], k_pos, self.context)
            if active is None:
                mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, -math.inf)
        if active is None:
            return self._merge(F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)), mask
        return self._merge(attend(q, keys, values, mask)), mask


class LayerScale(nn.Module):
    """Per-channel residual gain ``scale`` ``[d]``."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x


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
        self.kernels = KernelChoice.AUTO  # Mimi's CodecOptions.kernels (set when Mimi is built)

    def _feed_forward(self, x: Tensor) -> Tensor:
        hidden = F.gelu(linear(self.norm2(x), self.linear1.weight, None, self.kernels))
        return x + self.layer_scale_2(linear(hidden, self.linear2.weight, None, self.kernels))

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        x = x + self.layer_scale_1(self.self_attn(self.norm1(x), rope))
        return self._feed_forward(x)

    def step(self, x: Tensor, rope: Rope, slots: Slots, rings: KVRings, layer: int, mask: Tensor | None,
             active: Tensor | None) -> tuple[Tensor, Tensor]:
        update, mask = self.self_attn.step(self.norm1(x), rope, slots, rings, layer, mask, active)
        return self._feed_forward(x + self.layer_scale_1(update)), mask


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
        self.kernels = KernelChoice.AUTO  # Mimi's CodecOptions.kernels (set when Mimi is built)

    def _rope(self, positions: Tensor) -> Rope:
        if not self.config.rope:
            return None
        cos, sin = rope_angles(positions, self.config.head_dim, self.config.max_period)  # [B, 1, T, D/2]
        return cos.transpose(1, 2)[:, :, None], sin.transpose(1, 2)[:, :, None]

    def _native_fits(self, x: Tensor, state: TransformerState) -> bool:
        keys, c = state.rings.keys[0], self.config
        return (x.device.type == "cpu" and x.dtype == keys.dtype == torch.float32 and c.norm is NormKind.LAYER_NORM
                and self.transformer.layers[0].self_attn.in_proj_weight.dtype == torch.float32
                and c.head_dim % 16 == 0 and c.head_dim <= 256)  # the head dims of attention.h's loop

    def _native_weights(self) -> list[Tensor]:
        """Per layer, in the native op's order: in_proj, out_proj, linear1, linear2, norm1 w/b, norm2 w/b, layer
        scales (ones where the model has none). Built once (steps run under ``no_grad``: parameters go as they
        are); rebuilt if the parameters were replaced."""
        cached = getattr(self, "_native_weight_list", None)
        if cached is not None and cached[0] is self.transformer.layers[0].self_attn.in_proj_weight:
            return cached
        weights = []
        for layer in self.transformer.layers:
            scales = [ls.scale if isinstance(ls, LayerScale) else torch.ones_like(layer.norm1.weight)
                      for ls in (layer.layer_scale_1, layer.layer_scale_2)]
            weights += [layer.self_attn.in_proj_weight, layer.self_attn.out_proj.weight, layer.linear1.weight,
                        layer.linear2.weight, layer.norm1.weight, layer.norm1.bias, layer.norm2.weight,
                        layer.norm2.bias, *scales]
        self._native_weight_list = weights
        return weights

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
        rings = KVRings.create(c.num_layers, batch_size, c.num_heads, c.context, c.head_dim, c.context, weight.device,
                               weight.dtype)
        return TransformerState(rings, torch.zeros(batch_size, dtype=torch.long, device=weight.device))

    def step(self, x: Tensor, state: TransformerState, active: Tensor | None = None) -> Tensor:
        """Streaming step over ``x`` ``[B, C, T]``; inactive slots keep their state. On CPU in float32 the whole
        step is one native call (``dsmcli/kernels/mimi_transformer.cpp``: the same arithmetic up to float
        rounding; it books the rings' positions itself), else it runs layer by layer. The native step attends with
        the LM's decode-attention loop (``dsmcli/kernels/attention.h``, head dims a multiple of 16 up to 256): its
        outputs moved by <= 3e-7 relative to the largest when it replaced a loop of its own (another float order;
        the real-size fixture's streaming codes unchanged)."""
        x = self._project_in(x)
        steps = x.shape[1]
        if (op := mimi_transformer_op(self.kernels, self._native_fits(x, state))) is not None:
            c, rings = self.config, state.rings
            x = op(x, active, self._native_weights(), rings.keys, rings.values, rings.positions, state.offset,
                   c.num_heads, c.context, c.max_period if c.rope else 0.0, LAYER_NORM_EPS)
            return self._project_out(x)
        positions = state.offset[:, None] + torch.arange(steps, device=state.offset.device)
        slots = state.rings.claim(positions, active), positions  # once for every layer
        rope = self._rope(positions)
        mask = None
        for index, layer in enumerate(self.transformer.layers):
            x, mask = layer.step(x, rope, slots, state.rings, index, mask, active)
        state.offset.add_(steps if active is None else active.long() * steps)
        return self._project_out(x)
