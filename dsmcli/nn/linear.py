"""``F.linear`` with the operand order that suits the CPU GEMM libraries at streaming batch sizes.

A streaming step multiplies a few rows (``M`` = batch size, 1..64) by large weights ``[N, K]``. On CPU,
``F.linear(x, W)`` asks MKL / oneDNN for ``x @ W^T`` with a tiny ``M``, which they serve poorly. Measured on the
project's 2-core Sapphire Rapids (AVX-512, AMX), one thread, the stt-1b layer weights: the same product computed
as ``(W @ x^T)^T`` (a tall matrix times a few columns) runs 1.3-1.5x faster in float32 at ``M`` = 8..16 and
1.4-1.6x faster in bfloat16 at ``M`` = 8..16; for one row ``torch.mv`` is 1.1-1.6x faster in bfloat16 (float32:
the same kernel as ``F.linear``). Results (same CPU): bit-identical to ``F.linear`` for one row and, in bfloat16,
for every ``M``; float32 at ``M`` > 1 differs in the last bits (~1e-6 of the largest output: another summation
order, as MKL itself has between batch sizes).

Other devices (GPU) and weights that are not plain tensors (e.g. the int8 weights of
:mod:`dsmcli.engine.quantize`, which intercept ``F.linear``) go through ``F.linear`` unchanged.

``product``: a native float32 product (:func:`dsmcli.kernels.linear.fp32_linear_op`, ``fp32_linear.cpp``), used where
:func:`product_fits` (a few float32 rows on CPU against a weight too large for the caches). It reads the weight at
~1.3-1.9x the bandwidth of the BLAS GEMV (tts-1.6b backbone shapes, 2 threads: 28-42 against 21-24 GB/s), and a
row's result does not depend on ``M`` or its batch mates; it differs from BLAS by float rounding (~1e-6 relative).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


PRODUCT_MAX_ROWS = 16  # rows of x up to which the native product is used (streaming steps; one-shot calls use BLAS)
PRODUCT_MIN_WEIGHT_BYTES = 256 * 1024  # smaller weights stay in cache, where BLAS is as fast


def product_fits(x: Tensor, weight: Tensor, rows: int) -> bool:
    """Whether the native float32 product serves ``rows`` rows of ``x`` against ``weight`` ``[N, K]``."""
    return (isinstance(weight, Tensor) and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and weight.dim() == 2 and 0 < rows <= PRODUCT_MAX_ROWS and weight.numel() * 4 >= PRODUCT_MIN_WEIGHT_BYTES)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, product: Callable | None = None) -> Tensor:
    """``x`` ``[..., K]``, ``weight`` ``[N, K]``, ``bias`` ``[N]`` -> ``x @ weight^T + bias`` ``[..., N]`` (by
    ``product`` where it fits, see the module docstring)."""
    if not isinstance(weight, Tensor) or weight.device.type != "cpu" or weight.dim() != 2 or x.dtype != weight.dtype:
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    if product is not None and product_fits(x, weight, rows.shape[0]):
        out = product(rows.contiguous(), weight.contiguous(), bias)
        return out.view(*x.shape[:-1], weight.shape[0])
    if rows.shape[0] == 1:
        out = torch.mv(weight, rows[0]) if bias is None else torch.addmv(bias, weight, rows[0])
    elif bias is None:
        out = torch.mm(weight, rows.t()).t().contiguous()
    else:
        out = torch.addmm(bias[:, None], weight, rows.t()).t().contiguous()
    return out.reshape(*x.shape[:-1], weight.shape[0])
