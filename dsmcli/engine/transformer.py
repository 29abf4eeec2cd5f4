"""Pre-norm transformer stacks of the LM: the backbone and the depformer (FORMAT.md §3.3, §3.5, §3.6).

A layer is ``x += SelfAttn(norm1(x))``; ``x += CrossAttn(norm_cross(x), src)`` if enabled; ``x += FFN(norm2(x))``
(each update optionally scaled by a layer scale). Attention projections are stored stacked per weight set:
``in_proj`` ``[W, 3*dim, dim]`` (rows ``q | k | v``, each laid out ``(head, head_dim)``) and ``out_proj``
``[W, dim, dim]``; ``W`` > 1 only for a depformer with per-step weights, where step ``k`` uses set
``schedule[k]``.

The stacks run one step at a time (``T = 1``, what streaming needs). Per-step work shared by the layers is done
once in :meth:`Transformer.forward`: the ring bookkeeping and attention mask
(:class:`~dsmcli.nn.kv_rings.RingStep`) and the RoPE rotation (:class:`StepRope`). Projections go through
:func:`dsmcli.nn.linear.linear` (the CPU-friendly operand order). The streaming state (:class:`TransformerState`:
the KV rings, plus the cross-attention keys/values computed once per stream) is held by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsmcli.engine.config import TransformerConfig
from dsmcli.nn.kv_rings import KVRings, RingStep, sdpa_per_row
from dsmcli.kernels import KernelChoice
from dsmcli.kernels.attention import decode_attention_op
from dsmcli.kernels.linear import fp32_linear_op
from dsmcli.nn import make_norm, rope_angles
from dsmcli.nn.gating import GatedFFN
from dsmcli.nn.linear import linear
from dsmcli.nn.norms import LAYER_NORM_EPS
from dsmcli.nn.sinusoid import sin_embedding


def _split_heads(x: Tensor, parts: int, num_heads: int) -> Tensor:
    """``[B, T, parts*H*D]`` -> ``[parts, B, H, T, D]``."""
    b, t, _ = x.shape
    return x.view(b, t, parts, num_heads, -1).permute(2, 0, 3, 1, 4)


def _merge_heads(x: Tensor) -> Tensor:
    """``[B, H, T, D]`` -> ``[B, T, H*D]``."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


@dataclass(frozen=True)
class StepRope:
    """RoPE rotation of one step, shared by the layers: unit complex factors ``[B, 1, 1, D/2]`` (complex64).

    Pair ``i`` of a head vector, ``x[2i] + i x[2i+1]``, is multiplied by ``cos(p f_i) + i sin(p f_i)``: the
    rotation of :func:`dsmcli.nn.rotate` (FORMAT.md §3.3) as one complex product, computed in float32.
    """

    rotation: Tensor

    @classmethod
    def at(cls, positions: Tensor, head_dim: int, max_period: float) -> StepRope:
        """Angles for positions ``[B, 1]``."""
        cos, sin = rope_angles(positions, head_dim, max_period)
        return cls(torch.complex(cos, sin))

    def __call__(self, x: Tensor) -> Tensor:
        """Rotate ``x`` ``[..., B, H, 1, D]`` (e.g. queries and keys stacked on a leading dim)."""
        pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        return torch.view_as_real(pairs * self.rotation).flatten(-2).to(x.dtype)


class SelfAttention(nn.Module):
    """Causal self-attention over the stack's KV rings (one step; positions are absolute and per batch slot)."""

    def __init__(self, config: TransformerConfig, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        dim, sets = config.dim, config.num_weight_sets
        self.num_heads = config.num_heads
        self.in_proj = nn.Parameter(torch.empty(sets, 3 * dim, dim, device=device, dtype=dtype))
        self.out_proj = nn.Parameter(torch.empty(sets, dim, dim, device=device, dtype=dtype))

    def forward(self, x: Tensor, rings: KVRings, layer: int, step: RingStep, rope: StepRope | None,
                weight_set: int = 0, product: Callable | None = None) -> Tensor:
        """``x`` ``[B, 1, dim]``; writes this step's key/value into ``rings`` (layer ``layer``); ``product``: the
        native float32 product (:func:`dsmcli.nn.linear.linear`)."""
        qkv = _split_heads(linear(x, self.in_proj[weight_set], product=product), 3, self.num_heads)  # [3, B, H, 1, D]
        if rope is None:
            q, k = qkv[0], qkv[1]
        else:
            q, k = rope(qkv[:2])
        keys, values = rings.write(layer, step, k, qkv[2])
        out = rings.attend(layer, step, q, keys, values)
        return linear(_merge_heads(out), self.out_proj[weight_set], product=product)


class CrossAttention(nn.Module):
    """Attention from the stream to a fixed source (no RoPE, no mask). ``in_proj`` ``[1, 3*dim, dim]``: the first
    ``dim`` rows project queries, the rest keys and values of the source."""

    def __init__(self, dim: int, num_heads: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.in_proj = nn.Parameter(torch.empty(1, 3 * dim, dim, device=device, dtype=dtype))
        self.out_proj = nn.Parameter(torch.empty(1, dim, dim, device=device, dtype=dtype))
        self._masks: dict[tuple[int, int], Tensor] = {}

    def project_source(self, source: Tensor, native: Callable | None = None) -> tuple[Tensor, Tensor]:
        """Keys and values ``[B, H, S, head_dim]`` of ``source`` ``[B, S, dim]`` (computed once per stream); in
        float16 for the ``native`` decode-attention op (see :meth:`Transformer.init_state`)."""
        k, v = _split_heads(F.linear(source, self.in_proj[0, self.dim:]), 2, self.num_heads)
        if native is not None:  # one copy each, straight to contiguous float16 (no strided one first)
            return (k.to(torch.float16, memory_format=torch.contiguous_format),
                    v.to(torch.float16, memory_format=torch.contiguous_format))
        return k, v

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, native: Callable | None = None,
                product: Callable | None = None) -> Tensor:
        """``x`` ``[B, 1, dim]`` over the source ``keys``/``values``: by the ``native`` decode-attention op over
        float16 ones (what :meth:`project_source` made for it), else SDPA; ``product`` as :class:`SelfAttention`."""
        q = _split_heads(linear(x, self.in_proj[0, :self.dim], product=product), 1, self.num_heads)[0]
        if native is not None and keys.dtype == torch.float16:
            shape = (keys.shape[0], keys.shape[2])
            if shape not in self._masks:
                self._masks[shape] = torch.ones(shape[0], 1, 1, shape[1], dtype=torch.bool, device=keys.device)
            out = native(q.float().contiguous(), keys, values, self._masks[shape]).to(q.dtype)
        else:
            out = sdpa_per_row(q, keys, values)  # a row's bits do not depend on its place in the batch
        return linear(_merge_heads(out), self.out_proj[0], product=product)


class LayerScale(nn.Module):
    """Per-channel scale ``scale`` ``[dim]`` of a residual update."""

    def __init__(self, dim: int, init: float, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x


class TransformerLayer(nn.Module):
    def __init__(self, config: TransformerConfig, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        dim = config.dim
        self.norm1 = make_norm(config.norm, dim, device=device, dtype=dtype)
        self.self_attn = SelfAttention(config, device=device, dtype=dtype)
        self.norm2 = make_norm(config.norm, dim, device=device, dtype=dtype)
        self.per_step_ffn = config.schedule is not None
        self.plain_ffn = config.gating is None
        self.gating: nn.Module
        if config.gating is None:
            self.linear1 = nn.Linear(dim, config.dim_feedforward[0], bias=False, device=device, dtype=dtype)
            self.linear2 = nn.Linear(config.dim_feedforward[0], dim, bias=False, device=device, dtype=dtype)
        elif self.per_step_ffn:
            self.gating = nn.ModuleList([GatedFFN(dim, ff, config.gating, device=device, dtype=dtype)
                                         for ff in config.dim_feedforward])
        else:
            self.gating = GatedFFN(dim, config.dim_feedforward[0], config.gating, device=device, dtype=dtype)
        self.cross_attention: CrossAttention | None = None
        if config.cross_attention:
            self.cross_attention = CrossAttention(dim, config.num_heads, device=device, dtype=dtype)
            self.norm_cross = nn.LayerNorm(dim, eps=LAYER_NORM_EPS, device=device, dtype=dtype)
        scale = config.layer_scale
        self.layer_scale_1 = nn.Identity() if scale is None else LayerScale(dim, scale, device, dtype)
        self.layer_scale_2 = nn.Identity() if scale is None else LayerScale(dim, scale, device, dtype)
        if config.cross_attention:
            self.layer_scale_cross = nn.Identity() if scale is None else LayerScale(dim, scale, device, dtype)

    def _ffn(self, x: Tensor, weight_set: int, product: Callable | None) -> Tensor:
        if self.plain_ffn:
            return linear(F.gelu(linear(x, self.linear1.weight, product=product)), self.linear2.weight, product=product)
        if self.per_step_ffn:
            return cast(nn.ModuleList, self.gating)[weight_set](x, product)
        return self.gating(x, product)

    def forward(self, x: Tensor, rings: KVRings, layer: int, step: RingStep, rope: StepRope | None,
                cross: tuple[Tensor, Tensor] | None, weight_set: int, cross_native: Callable | None = None,
                product: Callable | None = None) -> Tensor:
        update = self.self_attn(self.norm1(x), rings, layer, step, rope, weight_set, product)
        x = x.to(update) + self.layer_scale_1(update)
        if self.cross_attention is not None:
            if cross is None:
                raise ValueError("this model has cross-attention: the stream needs a cross-attention source")
            x = x + self.layer_scale_cross(self.cross_attention(self.norm_cross(x), *cross, cross_native, product))
        update = self._ffn(self.norm2(x), weight_set, product)
        return x.to(update) + self.layer_scale_2(update)


@dataclass
class TransformerState:
    """Streaming state of a stack for a batch of ``B`` slots.

    rings: the KV rings of every layer (:class:`~dsmcli.nn.kv_rings.KVRings`); cross: per layer the
    cross-attention ``(keys, values)`` ``[B, H, S, head_dim]`` of the condition, or None; cross_native: the native
    decode-attention op the cross-attention uses (then its keys/values are float16), or None (SDPA); product: the
    native float32 product of the layers' linears (:func:`dsmcli.nn.linear.linear`), or None (BLAS).
    """

    rings: KVRings
    cross: list[tuple[Tensor, Tensor]] | None = None
    cross_native: Callable | None = None
    product: Callable | None = None

    def reset(self, mask: Tensor) -> None:
        """Forget the history of the slots selected by ``mask`` ``[B]`` (cross keys/values are kept)."""
        self.rings.reset(mask)


class Transformer(nn.Module):
    """A stack of :class:`TransformerLayer` run step by step over a :class:`TransformerState`."""

    def __init__(self, config: TransformerConfig, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([TransformerLayer(config, device, dtype) for _ in range(config.num_layers)])

    def init_state(self, batch_size: int, capacity: int, device: torch.device | str, dtype: torch.dtype,
                   cross_source: Tensor | None = None, static: bool = False,
                   attention: KernelChoice = KernelChoice.TORCH,
                   products: KernelChoice = KernelChoice.TORCH,
                   cross: list[tuple[Tensor, Tensor]] | None = None) -> TransformerState:
        """Empty rings of ``capacity`` steps; ``cross_source`` ``[B, S, dim]`` feeds cross-attention; ``static``
        always attends over the whole ring (fixed shapes); ``attention`` not ``torch``: self- and cross-attention
        use the native CPU decode kernel where it applies (see :mod:`dsmcli.nn.kv_rings`); ``products`` not
        ``torch``: float32 linears on CPU use the native product where it fits (:func:`dsmcli.nn.linear.linear`);
        ``cross``: per-layer keys/values already projected for this state's ``cross_native`` (a voice made before
        its stream), taken as they are instead of projecting ``cross_source``."""
        cfg = self.config
        rings = KVRings.create(cfg.num_layers, batch_size, cfg.num_heads, capacity, cfg.head_dim, cfg.context,
                               device, dtype, static, attention)
        cross_native = self.cross_native_op(device, attention)
        product = fp32_linear_op(products, torch.device(device).type == "cpu" and dtype == torch.float32)
        if cross is None:
            cross = self.cross_source(cross_source, cross_native)
        elif cross_source is not None:
            raise ValueError("give the cross-attention source or its projected keys/values, not both")
        return TransformerState(rings, cross, cross_native, product)

    def cross_source(self, source: Tensor | None, native: Callable | None = None) -> list[tuple[Tensor, Tensor]] | None:
        """Per-layer cross-attention keys/values of ``source`` ``[B, S, dim]`` (None without cross-attention), in
        float16 for the ``native`` decode-attention op (the state's ``cross_native``)."""
        if not self.config.cross_attention:
            return None
        return list(self.cross_source_layers(source, native))

    def cross_native_op(self, device: torch.device | str, attention: KernelChoice) -> Callable | None:
        """The native decode-attention op a state's ``cross_native`` gets on ``device`` under ``attention`` (then
        cross keys/values are float16), or None (SDPA; none without cross-attention): what :meth:`init_state` uses
        and what a voice projected before its stream must be made for."""
        return decode_attention_op(attention, self.config.cross_attention and torch.device(device).type == "cpu")

    def cross_source_layers(self, source: Tensor | None,
                            native: Callable | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """:meth:`cross_source` layer by layer, each computed when asked for (nothing without cross-attention)."""
        if not self.config.cross_attention:
            return
        if source is None:
            raise ValueError("this model has cross-attention: the stream needs a cross-attention source")
        for layer in self.layers:
            yield cast(CrossAttention, cast(TransformerLayer, layer).cross_attention).project_source(source, native)

    def forward(self, x: Tensor, positions: Tensor, state: TransformerState, active: Tensor | None = None,
                weight_set: int = 0) -> Tensor:
        """One step: ``x`` ``[B, 1, dim]`` at absolute ``positions`` ``[B, 1]`` -> ``[B, 1, dim]``.

        Slots where ``active`` ``[B]`` is False compute but leave their state untouched.
        """
        cfg = self.config
        if x.shape[1] != 1:
            raise ValueError(f"the LM stacks run one step at a time, got {x.shape[1]} steps")
        if cfg.positional_embedding.uses_sin:
            x = x + cfg.positional_scale * sin_embedding(positions, x.shape[-1], cfg.max_period, dtype=x.dtype)
        rope = StepRope.at(positions, cfg.head_dim, cfg.max_period) if cfg.positional_embedding.uses_rope else None
        step = state.rings.advance(positions, active)
        for i, layer in enumerate(self.layers):
            cross = None if state.cross is None else state.cross[i]
            x = layer(x, state.rings, i, step, rope, cross, weight_set, state.cross_native, state.product)
        return x
