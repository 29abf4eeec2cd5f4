"""Causal streaming convolutions with explicit per-slot state (FORMAT.md §2.4).

``CausalConv1d`` keeps the last ``P = (kernel - 1) * dilation + 1 - stride`` input samples of each
slot (``previous``); a step runs a valid convolution over ``previous ++ x``. ``pad_mode`` decides
what ``previous`` holds before the first step: zeros, or the first input sample repeated.
``CausalConvTranspose1d`` keeps the ``K - S`` overlapping output samples of the last step, minus
the bias (``partial``), and adds them to the next step's head. The one-shot ``forward`` of both
equals one step from a fresh state (``CausalConv1d``: up to float rounding, as its streaming steps run
the formulations of :mod:`dsmcli.codec.kernels` while ``forward`` keeps the native, reference-exact conv).

Module nesting mirrors the released tensor names (``….conv.conv.weight``, ``….convtr.convtr.weight``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsmcli.codec import kernels
from dsmcli.codec.config import PadMode
from dsmcli.kernels import KernelChoice
from dsmcli.kernels.codec import seanet_step_op

CONV, CONVTR, CONVTR_DEPTHWISE = 1, 4, 5  # op codes of the native SEANet step (dsmcli/kernels/seanet_step.cpp)


def _native_fits(x: Tensor, weight: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32


class SlotState(Protocol):
    def reset(self, mask: Tensor) -> None: ...


def nested(name: str, child: nn.Module) -> nn.Module:
    """A container holding ``child`` under ``name``: the released files nest some layers one level deeper."""
    holder = nn.Module()
    holder.add_module(name, child)
    return holder


def commit(dst: Tensor, src: Tensor, active: Tensor | None) -> None:
    """``dst[b] = src[b]`` for active slots (all when ``active`` is None); ``dst`` is ``[B, ...]``."""
    if active is None:
        dst.copy_(src)
    else:
        dst.copy_(torch.where(active.view(-1, *([1] * (dst.dim() - 1))), src, dst))


@dataclass
class ConvState:
    """previous: ``[B, C_in, P]`` input tail; fresh: ``[B]`` True until the slot's first step (kept, and read,
    in the replicate pad mode only)."""

    previous: Tensor
    fresh: Tensor

    def reset(self, mask: Tensor) -> None:
        self.previous.masked_fill_(mask[:, None, None], 0.0)
        self.fresh.masked_fill_(mask, True)


@dataclass
class ConvTrState:
    """partial: ``[B, C_out, K - S]`` overlap carried to the next step (bias excluded)."""

    partial: Tensor

    def reset(self, mask: Tensor) -> None:
        self.partial.masked_fill_(mask[:, None, None], 0.0)


class CausalConv1d(nn.Module):
    """Causal Conv1d: ``[B, C_in, T]`` → ``[B, C_out, T / stride]`` (``T`` a multiple of ``stride``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1, bias: bool = True, pad_mode: PadMode = PadMode.CONSTANT):
        super().__init__()
        self.conv = nested("conv", nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation,
                                             groups=groups, bias=bias))
        self.stride = stride
        self.dilation = dilation
        self.pad_mode = PadMode(pad_mode)
        self.kernels = KernelChoice.AUTO  # Mimi's CodecOptions.kernels (set when Mimi is built)
        self.context = (kernel_size - 1) * dilation + 1 - stride
        if self.context < 0:
            raise ValueError(f"kernel {kernel_size} (dilation {dilation}) shorter than stride {stride}")

    @property
    def layer(self) -> nn.Conv1d:
        return self.conv.conv

    def _check(self, x: Tensor) -> None:
        if x.shape[-1] % self.stride:
            raise ValueError(f"conv input length {x.shape[-1]} is not a multiple of the stride {self.stride}")

    def _convolve(self, x: Tensor) -> Tensor:
        """Streaming: valid conv of ``x`` ``[B, C_in, P + T]`` → ``[B, C_out, T / stride]`` by the fastest
        formulation for short inputs (:mod:`.kernels`; float sums in another order than ``forward``)."""
        layer = self.layer
        return kernels.conv1d(x, layer.weight, layer.bias, self.kernels, self.stride, self.dilation, layer.groups)

    def forward(self, x: Tensor) -> Tensor:
        """One shot from a fresh state (the native conv: bit-identical to the reference's offline path)."""
        self._check(x)
        if self.context:
            x = F.pad(x, (self.context, 0), mode=self.pad_mode.value)
        return self.layer(x)

    def init_state(self, batch_size: int) -> ConvState:
        weight = self.layer.weight
        previous = torch.zeros(batch_size, self.layer.in_channels, self.context, device=weight.device,
                               dtype=weight.dtype)
        return ConvState(previous, torch.ones(batch_size, device=weight.device, dtype=torch.bool))

    def native_code(self) -> int | None:
        """This conv's op code in the native SEANet step's program, or None if that step cannot run it."""
        return CONV if self.layer.groups == 1 else None

    def native_fits(self, x: Tensor) -> bool:
        """Whether the native SEANet step (``dsmcli/kernels/seanet_step.cpp``) can run this conv on ``x``."""
        return _native_fits(x, self.layer.weight) and self.native_code() is not None

    def native_tail(self, state: ConvState) -> Tensor:
        """The native step's ``tails`` argument: the input tail."""
        return state.previous

    def native_fresh(self, state: ConvState) -> Tensor | None:
        """The native step's ``fresh`` argument: the flags in the replicate pad mode, else None (zeros)."""
        return state.fresh if self.pad_mode is PadMode.REPLICATE else None

    def step(self, x: Tensor, state: ConvState, active: Tensor | None = None) -> Tensor:
        """One streaming step; slots with ``active`` False keep their state (their output is garbage). On CPU in
        float32 one native call (the formulations of :mod:`.kernels` without the Python round trips)."""
        self._check(x)
        if (op := seanet_step_op(self.kernels, self.native_fits(x))) is not None:
            layer = self.layer
            return op(x, [CONV], [layer.weight], [layer.bias], [state.previous], [self.stride], [self.dilation],
                      [self.native_fresh(state)], active, 1.0)
        if not self.context:
            return self._convolve(x)
        previous = state.previous
        if self.pad_mode is PadMode.REPLICATE:  # the only mode that reads ``fresh``
            previous = torch.where(state.fresh[:, None, None], x[..., :1], previous)
            if active is None:
                state.fresh.fill_(False)
            else:
                state.fresh.logical_and_(~active)
        full = torch.cat([previous, x], dim=-1)
        commit(state.previous, full[..., -self.context:], active)
        return self._convolve(full)


class CausalConvTranspose1d(nn.Module):
    """Causal ConvTranspose1d: ``[B, C_in, T]`` → ``[B, C_out, T * stride]`` (right overlap carried)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1,
                 bias: bool = True):
        super().__init__()
        self.convtr = nested("convtr", nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride,
                                                          groups=groups, bias=bias))
        self.stride = stride
        self.dilation = 1
        self.overlap = kernel_size - stride
        self.kernels = KernelChoice.AUTO  # Mimi's CodecOptions.kernels (set when Mimi is built)
        if self.overlap < 0:
            raise ValueError(f"transposed conv kernel {kernel_size} shorter than stride {stride}")

    @property
    def layer(self) -> nn.ConvTranspose1d:
        return self.convtr.convtr

    def forward(self, x: Tensor) -> Tensor:
        """One shot from a fresh state (the overlap past the end is dropped)."""
        y = self.layer(x)
        return y[..., : y.shape[-1] - self.overlap]

    def init_state(self, batch_size: int) -> ConvTrState:
        weight = self.layer.weight
        return ConvTrState(torch.zeros(batch_size, self.layer.out_channels, self.overlap, device=weight.device,
                                       dtype=weight.dtype))

    def native_code(self) -> int | None:
        """This transposed conv's op code in the native SEANet step's program, or None if it cannot run it."""
        layer = self.layer
        if layer.groups == 1:
            return CONVTR
        return CONVTR_DEPTHWISE if layer.groups == layer.in_channels == layer.out_channels else None

    def native_fits(self, x: Tensor) -> bool:
        """Whether the native SEANet step (``dsmcli/kernels/seanet_step.cpp``) can run this conv on ``x``."""
        return _native_fits(x, self.layer.weight) and self.native_code() is not None

    def native_tail(self, state: ConvTrState) -> Tensor:
        """The native step's ``tails`` argument: the partial overlap."""
        return state.partial

    def native_fresh(self, state: ConvTrState) -> None:
        """The native step's ``fresh`` argument: none (a transposed conv has no padding)."""
        return None

    def step(self, x: Tensor, state: ConvTrState, active: Tensor | None = None) -> Tensor:
        """One streaming step; slots with ``active`` False keep their state (their output is garbage). On CPU in
        float32 one native call (one product and the overlap-add, without the Python round trips)."""
        if (op := seanet_step_op(self.kernels, self.native_fits(x))) is not None:
            layer = self.layer
            return op(x, [self.native_code()], [layer.weight], [layer.bias], [state.partial], [self.stride], [1],
                      [None], active, 1.0)
        y = self.layer(x)
        if not self.overlap:
            return y
        y[..., : self.overlap] += state.partial
        tail = y[..., -self.overlap:]
        if self.layer.bias is not None:
            tail = tail - self.layer.bias[:, None]
        commit(state.partial, tail, active)
        return y[..., : y.shape[-1] - self.overlap]
