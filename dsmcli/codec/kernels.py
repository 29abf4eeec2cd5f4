"""Convolutions as one matrix product, for the streaming steps where the weights dwarf the input.

A streaming step of Mimi sees a few time steps (2 latent steps per frame) against weights of up to
33 MB. PyTorch's native CPU convolutions then spend their time re-laying the weights out on every
call; one ``F.linear`` over the unfolded input (im2col) reads each weight once, in the layout the
BLAS ``x @ Wᵀ`` kernel streams best. For long inputs (one-shot) the native kernels stay better, so
:func:`prefer_matmul` picks by size: the matrix product wins while the unfolded input is no larger
than ``MATMUL_RATIO`` times the weights.

Both kernels compute exactly the native operation (only float summation order may differ).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

MATMUL_RATIO = 1  # unfolded-input elements per weight element below which the matrix product is used


def prefer_matmul(weight: Tensor, columns: int, groups: int = 1) -> bool:
    """True when a (non-grouped) conv with ``weight`` should run as one matrix product over ``columns``
    unfolded input elements."""
    return groups == 1 and columns <= MATMUL_RATIO * weight.numel()


def conv1d_columns(batch: int, channels: int, length: int, kernel: int, stride: int, dilation: int) -> int:
    """Number of elements of the unfolded input of a valid conv over ``[batch, channels, length]``."""
    steps = (length - (kernel - 1) * dilation - 1) // stride + 1
    return batch * max(steps, 0) * channels * kernel


def conv1d_matmul(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, dilation: int) -> Tensor:
    """Valid (unpadded) ``F.conv1d``: ``x`` ``[B, C, L]``, ``weight`` ``[O, C, K]`` → ``[B, O, T]``
    with ``T = (L - (K - 1) * dilation - 1) // stride + 1``. The result is a transposed view of a
    ``[B, T, O]`` tensor."""
    batch, channels, _ = x.shape
    out_channels, _, kernel = weight.shape
    span = (kernel - 1) * dilation + 1
    columns = x.unfold(2, span, stride)  # [B, C, T, span]
    if dilation > 1:
        columns = columns[..., ::dilation]
    steps = columns.shape[2]
    columns = columns.permute(0, 2, 1, 3).reshape(batch * steps, channels * kernel)
    out = F.linear(columns, weight.view(out_channels, channels * kernel), bias)  # [B*T, O]
    return out.view(batch, steps, out_channels).transpose(1, 2)


def conv_transpose1d_matmul(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
    """``F.conv_transpose1d`` (no padding): ``x`` ``[B, C, T]``, ``weight`` ``[C, O, K]`` →
    ``[B, O, (T - 1) * stride + K]``.

    Each input step contributes ``weight · x_t`` ``[O, K]`` at output offset ``t * stride``; the
    ``ceil(K / stride)`` pieces of every contribution are overlap-added. Fastest when ``weight`` is
    stored as ``[O·K, C]`` rows (see :func:`matmul_layout`)."""
    batch, channels, steps = x.shape
    out_channels, kernel = weight.shape[1], weight.shape[2]
    pieces = -(-kernel // stride)
    rows = x.transpose(1, 2).reshape(batch * steps, channels)
    contributions = F.linear(rows, weight.view(channels, out_channels * kernel).t())  # [B*T, O*K]
    contributions = contributions.view(batch, steps, out_channels, kernel)
    if pieces * stride != kernel:
        contributions = F.pad(contributions, (0, pieces * stride - kernel))
    contributions = contributions.view(batch, steps, out_channels, pieces, stride).permute(3, 0, 2, 1, 4)
    out = contributions.new_zeros(batch, out_channels, steps + pieces - 1, stride)
    for piece in range(pieces):
        out[:, :, piece : piece + steps] += contributions[piece]
    out = out.view(batch, out_channels, -1)[..., : (steps - 1) * stride + kernel]
    return out if bias is None else out + bias[:, None]


def matmul_layout(weight: Tensor) -> Tensor:
    """The same ``[C, O, K]`` transposed-conv weight, stored as contiguous ``[O·K, C]`` rows (a strided
    view), so :func:`conv_transpose1d_matmul` reads it as ``x @ Wᵀ``. Values are unchanged."""
    channels, out_channels, kernel = weight.shape
    rows = weight.reshape(channels, out_channels * kernel).t().contiguous()  # [O*K, C]
    return rows.t().view(channels, out_channels, kernel)

