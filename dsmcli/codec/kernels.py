"""Mimi's products by the fastest CPU formulation for the shapes a streaming step sees: :func:`linear` and
:func:`conv1d`.

:func:`linear` sends a few rows (``<= PRODUCT_MAX_ROWS``: a streaming step's time steps) against a float32 weight of
at least ``PRODUCT_MIN_WEIGHT_BYTES`` (both: :func:`dsmcli.nn.linear.product_fits`) to the native kernel ``dsmcli/kernels/fp32_linear.cpp``, which streams the
weight from memory in several concurrent runs per thread; BLAS reads these cache-cold weights at ~60 % of that
speed (a streaming encode frame at batch 1: ~24 -> ~21.5 ms, A/B in one process on the project's 2-core VM).
Each output is then one fixed-order dot product (~1e-6 relative from BLAS, independent of the other rows).
Other shapes, devices and dtypes, or no compiler, go to ``F.linear``.

A streaming encode step runs convs over 1920 samples with small weights down to 2 latent steps with
weights of up to 33 MB. PyTorch's CPU ``conv1d`` picks oneDNN for the long inputs and its
``_slow_conv2d`` fallback (im2col, then ``W [O, C·K] @ columns``) for 1×1 convs, one input channel and
short inputs (up to ~24 samples: the deep convs, where that product has only 2-4 columns and runs
far below memory speed). Measured per layer (2-core Sapphire Rapids, released Mimi sizes, one thread),
two matrix-product forms of the same conv win:

* **rows** (output length ``T <= ROWS_MAX_STEPS``): :func:`linear` of the unfolded input ``[B·T, C·K]``
  with the weight as ``[O, C·K]``, the GEMV-like kernel that streams the weight once (the 33 MB
  1024→512·16 stride-8 conv: 6.0 → 2.6 ms; 512→1024·3: 1.0 → 0.4 ms; decoder 512→1024·7: 2.3 → 0.9 ms).
* **columns** (longer outputs): ``W [O, C·K] @ columns [C·K, T]``, im2col without the oneDNN call
  overheads (256→512·12 stride 6: 2.0 → 1.1 ms; 128→256·10 stride 5: 1.4 → 1.1 ms).

1×1 convs, grouped convs, convs with fewer than ``MIN_COLUMN_SIZE`` input values per output (the
first 1-channel conv) and outputs longer than ``COLUMNS_MAX_STEPS`` keep ``F.conv1d``. All forms
compute the same sums in another float order (~1e-6 relative), so a streaming Mimi's latents differ
from the reference's by ~3e-7 (codes identical on the real-size test fixture, see the parity tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from dsmcli.kernels import KernelChoice
from dsmcli.kernels.codec import rvq_encode_op, rvq_encode_screened_op
from dsmcli.kernels.linear import fp32_linear_op
from dsmcli.nn.linear import product_fits

ROWS_MAX_STEPS = 4  # output steps up to which the unfolded-rows product is used
COLUMNS_MAX_STEPS = 2048  # longer outputs (one-shot calls): the native kernel, without a huge im2col copy
MIN_COLUMN_SIZE = 16  # C_in * kernel below this: the native kernel is as fast


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, kernels: KernelChoice) -> Tensor:
    """``F.linear(x, weight, bias)``: ``x`` ``[..., K]``, ``weight`` ``[N, K]`` -> ``[..., N]`` (see the module
    docstring for when the native kernel runs; ``kernels``: the codec's :class:`~dsmcli.kernels.KernelChoice`)."""
    out = native_linear(x, weight, bias, kernels)
    return F.linear(x, weight, bias) if out is None else out


def native_linear(x: Tensor, weight: Tensor, bias: Tensor | None, kernels: KernelChoice) -> Tensor | None:
    """:func:`linear` by the native kernel, or None where :func:`linear` would use ``F.linear``."""
    rows = x.numel() // max(1, x.shape[-1])
    if (op := fp32_linear_op(kernels, product_fits(x, weight, rows))) is None:
        return None
    out = op(x.reshape(rows, x.shape[-1]).contiguous(), weight.contiguous(), bias)
    return out.view(*x.shape[:-1], weight.shape[0])


def rvq_encode(residual: Tensor, tables: Tensor, kernels: KernelChoice,
               screen: Callable[[], tuple[Tensor, ...]] | None = None) -> Tensor | None:
    """Codes ``[L, N]`` of the residual quantizer over ``tables`` ``[L, bins, dim + 2]`` (augmented centroid rows)
    for ``residual`` ``[N, dim]``, by the native kernel (the arithmetic of :meth:`ResidualVQ.encode` with the
    product of :func:`linear`, no Python round trip per level); None where :func:`linear` would not go native.

    With ``screen`` (returning :func:`screen_tables` of the tables, or of more levels) the kernel reads the
    centroids as int8 first and computes exact distances only for the centroids that rounding leaves in the
    running: the same codes, bit for bit, from about a quarter of the memory traffic."""
    if (op := rvq_encode_op(kernels, product_fits(residual, tables[0], residual.shape[0]))) is None:
        return None
    if screen is not None and residual.shape[-1] % 16 == 0:
        levels = tables.shape[0]
        return cast(Callable, rvq_encode_screened_op(kernels))(residual.contiguous(), tables.contiguous(),
                                                               *(t[:levels] for t in screen()))
    return op(residual.contiguous(), tables.contiguous())


def screen_tables(tables: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """For augmented ``tables`` ``[L, bins, dim + 2]``: the centroids as int8 ``[L, bins, dim]`` with one float32
    scale per centroid (``e ~ scale * e8``, symmetric, round to nearest), then per centroid ``[L, bins]`` float32:
    the scale, the norm of the rounding error and the centroid's norm (both rounded up: upper bounds), and the
    tables' ``|e|^2`` column."""
    centroids = tables[..., :-2].double()
    scales = (centroids.abs().amax(dim=-1, keepdim=True) / 127).clamp(min=torch.finfo(torch.float32).tiny).float()
    rounded = (centroids / scales.double()).round().clamp(-127, 127)
    up = 1 + 1e-6
    slack = ((centroids - rounded * scales.double()).norm(dim=-1) * up).float()
    norms = (centroids.norm(dim=-1) * up).float()
    return (rounded.to(torch.int8).contiguous(), scales[..., 0].contiguous(), slack.contiguous(), norms.contiguous(),
            tables[..., -1].contiguous())


def conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, kernels: KernelChoice, stride: int = 1,
           dilation: int = 1, groups: int = 1) -> Tensor:
    """Valid (unpadded) ``F.conv1d``: ``x`` ``[B, C, L]``, ``weight`` ``[O, C / groups, K]`` → ``[B, O, T]``
    with ``T = (L - (K - 1) * dilation - 1) // stride + 1``."""
    out_channels, channels, kernel = weight.shape
    steps = (x.shape[-1] - (kernel - 1) * dilation - 1) // stride + 1
    if (groups != 1 or kernel == 1 or channels * kernel < MIN_COLUMN_SIZE or not 0 < steps <= COLUMNS_MAX_STEPS
            or x.device.type != "cpu"):
        return F.conv1d(x, weight, bias, stride, dilation=dilation, groups=groups)
    windows = x.unfold(2, (kernel - 1) * dilation + 1, stride)  # [B, C, T, span]
    if dilation > 1:
        windows = windows[..., ::dilation]  # [B, C, T, K]
    matrix = weight.reshape(out_channels, channels * kernel)
    if steps <= ROWS_MAX_STEPS:
        rows = windows.permute(0, 2, 1, 3).reshape(x.shape[0], steps, channels * kernel)
        return linear(rows, matrix, bias, kernels).transpose(1, 2)
    columns = windows.permute(0, 1, 3, 2).reshape(x.shape[0], channels * kernel, steps)
    out = torch.matmul(matrix, columns)  # [B, O, T]
    return out if bias is None else out.add_(bias[:, None])
