"""Dispatch of the decode-attention kernels (``decode_attention.cpp``): the quantized LM's attention over float16
KV rings and cross-attention sources.

Each function takes the caller's :class:`~dsmcli.kernels.KernelChoice` and whether its tensors fit the kernel
(``fits``), and returns the compiled op or None (then SDPA runs); see :mod:`dsmcli.kernels`.
"""

from __future__ import annotations

from collections.abc import Callable

from dsmcli.kernels import KernelChoice, load_op


def decode_attention_op(choice: KernelChoice | str, fits: bool = True) -> Callable | None:
    """``decode(q [B, H, 1, D] f32, keys [B, H, C, D], values [B, H, C, D] (f32 or f16), mask [B, 1, 1, S] bool,
    lengths [B] i64 | None (cells each slot attends over, <= S)) -> [B, H, 1, D] f32``, or None."""
    return load_op("decode_attention", choice, fits)


def ring_write_op(choice: KernelChoice | str, fits: bool = True) -> Callable | None:
    """``write(keys [B, H, C, D], values, k [B, H, 1, D] f32, v, cells [B] i64)`` (in place), or None."""
    return load_op("decode_attention", choice, fits, op="write")
