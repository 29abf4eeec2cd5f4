"""Dispatch of Mimi's streaming kernels: SEANet steps, the transformer step and the residual quantizer.

Each function takes the caller's :class:`~dsmcli.kernels.KernelChoice` (``CodecOptions.kernels``) and whether its
tensors fit the kernel (``fits``), and returns the compiled op or None (then the torch path runs); see
:mod:`dsmcli.kernels`. The float32 product of a streaming step is :func:`dsmcli.kernels.linear.fp32_linear_op`.
"""

from __future__ import annotations

from collections.abc import Callable

from dsmcli.kernels import KernelChoice, load_op


def seanet_step_op(choice: KernelChoice | str, fits: bool = True) -> Callable | None:
    """``step(x [B, C, N], program, weights, biases, tails, strides, dilations, fresh, active, alpha)``
    (``seanet_step.cpp``), or None."""
    return load_op("seanet_step", choice, fits)


def mimi_transformer_op(choice: KernelChoice | str, fits: bool = True) -> Callable | None:
    """``transformer_step(x [B, T, d], active, weights, keys, values, positions, offset, num_heads, context,
    max_period, eps) -> [B, T, d]`` (``mimi_transformer.cpp``), or None."""
    return load_op("mimi_transformer", choice, fits)


def rvq_encode_op(choice: KernelChoice | str, fits: bool = True) -> Callable | None:
    """``rvq_encode(x [M, D] f32, tables [L, bins, D + 2] f32) -> codes [L, M] i64`` (``fp32_linear.cpp``), or
    None."""
    return load_op("fp32_linear", choice, fits, op="rvq_encode")


def rvq_encode_screened_op(choice: KernelChoice | str, fits: bool = True) -> Callable | None:
    """:func:`rvq_encode_op` reading int8-screened centroids first (same codes; see ``fp32_linear.cpp``), or None."""
    return load_op("fp32_linear", choice, fits, op="rvq_encode_screened")
