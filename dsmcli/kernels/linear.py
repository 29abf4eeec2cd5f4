"""Dispatch of the linear kernels: the quantized LM's int8 / int4 weights and float32 streaming products.

Each function takes the caller's :class:`~dsmcli.kernels.KernelChoice` and whether its tensors fit the kernel
(``fits``), and returns the compiled op or None (then the caller's pure-torch path runs); see :mod:`dsmcli.kernels`.
"""

from __future__ import annotations

from collections.abc import Callable

from dsmcli.kernels import KernelChoice, load_op


def int8_linear_op(choice: KernelChoice | str, fits: bool = True) -> Callable | None:
    """``linear(x [M, K] f32, w [N, K] i8, scales [N, G] f32, wsum [N, G] i32, group_size) -> [M, N]``
    (``int8_linear.cpp``), or None."""
    return load_op("int8_linear", choice, fits)


def int4_linear_op(choice: KernelChoice | str, fits: bool = True) -> Callable | None:
    """``linear(x [M, K] f32, w [N, K / 2] u8 (packed nibbles), scales [N, G] f32, group_size) -> [M, N]``
    (``int4_linear.cpp``), or None."""
    return load_op("int4_linear", choice, fits)


def fp32_linear_op(choice: KernelChoice | str, fits: bool = True) -> Callable | None:
    """``linear(x [M, K] f32, w [N, K] f32, bias [N] f32 | None) -> [M, N]`` (``fp32_linear.cpp``), or None."""
    return load_op("fp32_linear", choice, fits)
