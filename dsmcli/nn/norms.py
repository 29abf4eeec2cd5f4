"""Normalisation layers by their config name (``norm`` key of the released configs).

FORMAT.md §3.3: ``rms_norm_f32`` = RMSNorm eps 1e-8 computed in float32; ``rms_norm`` = eps 1e-5 in the
input dtype; ``layer_norm`` = ``nn.LayerNorm`` eps 1e-5; ``layer_norm_f32`` = LayerNorm eps 1e-8 in float32.
"""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RMS_EPS = 1e-5
RMS_F32_EPS = 1e-8
LAYER_NORM_EPS = 1e-5
LAYER_NORM_F32_EPS = 1e-8


class NormKind(str, Enum):
    LAYER_NORM = "layer_norm"
    LAYER_NORM_F32 = "layer_norm_f32"
    RMS_NORM = "rms_norm"
    RMS_NORM_F32 = "rms_norm_f32"


class RMSNorm(nn.Module):
    """``y = x * alpha / sqrt(eps + mean(x**2))`` over the last dim, for ``x`` ``[..., dim]``.

    Computed in ``compute_dtype`` (float32 by default; None = the input dtype) and cast back to the
    input dtype. The gain is stored as ``alpha`` with shape ``[1, 1, dim]`` (the released name).
    """

    def __init__(self, dim: int, eps: float = RMS_F32_EPS, compute_dtype: torch.dtype | None = torch.float32,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.eps = eps
        self.compute_dtype = compute_dtype
        self.alpha = nn.Parameter(torch.ones(1, 1, dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.compute_dtype is None else x.to(self.compute_dtype)
        var = torch.mean(h * h, dim=-1, keepdim=True) + self.eps
        return (h * (self.alpha.to(var.dtype) * torch.rsqrt(var))).to(x.dtype)


class LayerNormF32(nn.LayerNorm):
    """``nn.LayerNorm`` computed in float32 and cast back to the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def make_norm(kind: NormKind | str, dim: int, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> nn.Module:
    """The norm layer named ``kind`` (see module docstring) for feature size ``dim``."""
    kind = NormKind(kind)
    if kind is NormKind.LAYER_NORM:
        return nn.LayerNorm(dim, eps=LAYER_NORM_EPS, device=device, dtype=dtype)
    if kind is NormKind.LAYER_NORM_F32:
        return LayerNormF32(dim, eps=LAYER_NORM_F32_EPS, device=device, dtype=dtype)
    if kind is NormKind.RMS_NORM:
        return RMSNorm(dim, eps=RMS_EPS, compute_dtype=None, device=device, dtype=dtype)
    return RMSNorm(dim, eps=RMS_F32_EPS, compute_dtype=torch.float32, device=device, dtype=dtype)
