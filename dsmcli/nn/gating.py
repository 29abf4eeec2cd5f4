"""Feed-forward blocks of the DSM transformers (FORMAT.md §3.3).

``GatedFFN``: ``linear_out(act(a) * b)`` where ``[a | b] = linear_in(x)`` split into two halves of width
``H``; the released LMs use SiLU. ``H`` follows the reference rule: ``21 * dim // 8`` when
``dim_feedforward == 4 * dim``, else ``2 * dim_feedforward // 3`` (5632 for dim 2048, hidden_scale 4.125).
No biases. (Gating ``none`` is the plain ``linear2(gelu(linear1(x)))`` FFN, built by the transformer layer.)
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsmcli.nn.linear import linear


class Activation(str, Enum):
    """The ``gating`` values of the configs (the activation of the gate half)."""

    SILU = "silu"
    GELU = "gelu"
    RELU = "relu"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    ELU = "elu"
    LEAKY_RELU = "leaky_relu"
    MISH = "mish"
    SOFTSIGN = "softsign"
    IDENTITY = "identity"

    @property
    def fn(self) -> Callable[[Tensor], Tensor]:
        return _ACTIVATIONS[self]


_ACTIVATIONS: dict[Activation, Callable[[Tensor], Tensor]] = {
    Activation.SILU: F.silu,
    Activation.GELU: F.gelu,
    Activation.RELU: torch.relu,
    Activation.SIGMOID: torch.sigmoid,
    Activation.TANH: torch.tanh,
    Activation.ELU: F.elu,
    Activation.LEAKY_RELU: F.leaky_relu,
    Activation.MISH: F.mish,
    Activation.SOFTSIGN: F.softsign,
    Activation.IDENTITY: lambda x: x,
}


def gated_hidden_size(dim: int, dim_feedforward: int) -> int:
    """Width ``H`` of the gated hidden layer for model width ``dim`` and nominal FFN width."""
    if dim_feedforward == 4 * dim:
        return (21 * dim) // 8
    return (2 * dim_feedforward) // 3


class GatedFFN(nn.Module):
    """Gated FFN for ``x`` ``[B, T, dim]`` -> ``[B, T, dim]``; weights ``linear_in`` ``[2H, dim]``, ``linear_out``
    ``[dim, H]``."""

    def __init__(self, dim: int, dim_feedforward: int, activation: Activation,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        hidden = gated_hidden_size(dim, dim_feedforward)
        self.activation = activation
        self.linear_in = nn.Linear(dim, 2 * hidden, bias=False, device=device, dtype=dtype)
        self.linear_out = nn.Linear(hidden, dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: Tensor, product: Callable | None = None) -> Tensor:
        """``product``: the native float32 product where it fits (:func:`dsmcli.nn.linear.linear`)."""
        h = linear(x, self.linear_in.weight, product=product)
        h = h.view(*h.shape[:-1], 2, -1)
        return linear(self.activation.fn(h[..., 0, :]) * h[..., 1, :], self.linear_out.weight, product=product)
