"""Dispatch of the depformer kernels (``depformer_step.cpp``): one sub-step, or all the sub-steps of a main step.

Each function takes the stream's :class:`~dsmcli.kernels.KernelChoice` (``EngineOptions.kernels``) and whether the
depformer fits the kernel (``fits``), and returns the compiled op or None (then the torch path runs); see
:mod:`dsmcli.kernels`. The kernel runs on the linear kernels of :mod:`dsmcli.kernels.linear`.
"""

from __future__ import annotations

from collections.abc import Callable

from dsmcli.kernels import KernelChoice, load_op


def depformer_step_op(choice: KernelChoice | str, fits: bool = True) -> Callable | None:
    """``step(input [B, D], weights, kinds, group_sizes, keys, values, position, num_heads, eps, out_eps) ->
    logits [B, card]``, or None."""
    return load_op("depformer_step", choice, fits)


def depformer_frame_op(choice: KernelChoice | str, fits: bool = True) -> Callable | None:
    """``frame(...)``: every sub-step of a main step, their sampling included (see ``depformer_step.cpp``), or
    None."""
    return load_op("depformer_step", choice, fits, op="frame")
