"""The depformer's sub-steps in one native call each (``dsmcli/kernels/depformer_step.cpp``).

A TTS frame runs the depformer 32 times, one codebook after the other; in torch each sub-step is ~150 small ops
(norms, projections, a ring write, attention, the gated FFN, per layer), and their dispatch cost more than their
arithmetic on CPU. :class:`NativeDepformer` runs the whole stack of a sub-step, its output norm and its head in
one call, on the project's streaming linear kernels (float32, int8 or int4 weights, as the model holds them).
The input projection, the token embedding and the sampling stay in torch.

:meth:`NativeDepformer.frame` goes further: all the sub-steps of a main step in one call (``depformer_step.cpp``'s
``frame`` op), each with its input projection, its token embedding (the previous codebook's sampled token) and
its sampling (temperature, top-k, CFG mix), done with the same ATen operators in the same order as
:func:`dsmcli.engine.sampling.sample_token`, so the same random draws give the same tokens bit for bit. Only the
text token's embedding (codebook 0's input) stays in torch.

It applies to the released depformer layout on CPU in float32 (no positional embedding, RMSNorm, gated SiLU FFN,
no layer scale, no cross-attention); :func:`native_depformer` returns None elsewhere and the torch path runs.
Results match the torch path to float rounding (other summation orders: ~1e-6 relative on the logits).
"""

from __future__ import annotations

import time
from typing import Any, cast

import torch
from torch import Tensor, nn

from dsmcli.engine.quantize import Int4Weight, Int8Kernel, Int8Weight
from dsmcli.engine.transformer import TransformerLayer
from dsmcli.kernels import KernelChoice
from dsmcli.kernels.depformer import depformer_frame_op, depformer_step_op
from dsmcli.kernels.linear import fp32_linear_op
from dsmcli.nn.gating import Activation, GatedFFN
from dsmcli.nn.norms import RMSNorm

FLOAT, INT8, INT4 = 0, 1, 2  # the kernel's linear kinds


def _linear_args(weight: Any) -> tuple[list[Tensor], int, int] | None:
    """(tensors, kind, group size) of one linear weight for the kernel, or None when it cannot take it."""
    if isinstance(weight, Int4Weight):
        return ([weight.q, weight.scale], INT4, weight.group_size) if weight.resolved_kernel() is Int8Kernel.NATIVE \
            else None
    if isinstance(weight, Int8Weight):
        if weight.resolved_kernel() is not Int8Kernel.NATIVE:
            return None
        return [weight.q, weight.scale, weight.group_sums], INT8, weight.group_size
    if isinstance(weight, Tensor) and weight.dtype == torch.float32 and weight.dim() == 2:
        return [weight.contiguous()], FLOAT, 0
    return None


# the frame op's lists: tensors, kinds, group sizes, tensor / kind starts per codebook, output-norm eps per codebook
FrameArguments = tuple[list[Tensor], list[int], list[int], list[int], list[int], list[float]]
NO_LINEAR = -1


# How the frame op uses the cores: POOL, each linear a parallel region of torch's pool (a thread wake-up each,
# ~20-30 us on the 2-core VM); SERIAL, the calling thread alone, no parallel region (one thread already reads a
# cold weight from memory at the bandwidth two get, see benchmarks/README.md); HELPER, one region per frame, a
# second thread computing half of each linear (spin-then-yield hand-offs: the fastest while both threads have a
# core, 2x slower than SERIAL on an oversubscribed machine). All three compute the same tokens bit for bit.
# AUTO: SERIAL or HELPER, whichever has been faster lately (:class:`ModeTuner`). Every linear of the frame is then
# a native kernel (float32 ones included: each output a fixed-order dot product whatever the thread split), so the
# three modes give the same bits; a float32 model's input projections differ from the torch path's BLAS products
# by float rounding (~1e-6 relative), as its backbone's linears do (:func:`dsmcli.nn.linear.linear`).
AUTO, POOL, SERIAL, HELPER = -1, 0, 1, 2
FRAME_THREADS = AUTO


class ModeTuner:
    """Picks SERIAL or HELPER by their recent wall time per full frame (exponential moving averages): each mode is
    tried ``TRIALS`` times first, then the faster one runs and the other is probed once every ``PROBE_EVERY``
    frames, so a machine that becomes busy (or quiet) is followed within a few seconds of audio."""

    TRIALS = 2
    PROBE_EVERY = 25
    WEIGHT = 0.3  # of the newest frame in the average

    def __init__(self) -> None:
        self.average: dict[int, float] = {}
        self.trials = {SERIAL: 0, HELPER: 0}
        self.frames = 0

    def choose(self) -> int:
        for mode, count in self.trials.items():
            if count < self.TRIALS:
                return mode
        best = min(self.average, key=self.average.__getitem__)
        if self.frames % self.PROBE_EVERY == self.PROBE_EVERY - 1:
            return SERIAL if best == HELPER else HELPER
        return best

    def record(self, mode: int, seconds: float) -> None:
        self.frames += 1
        self.trials[mode] += 1
        old = self.average.get(mode)
        self.average[mode] = seconds if old is None else (1 - self.WEIGHT) * old + self.WEIGHT * seconds
SPLIT = 5  # + kind: the frame op's two-thread split of a native linear (kinds 0-2)


def _split(args: tuple[list[Tensor], int, int]) -> tuple[list[Tensor], int, int]:
    """A native linear's tensors as two halves of its output rows (views, no copy) for the frame op's helper
    thread; kinds other than the native ones (the torch products, no linear) are returned as they are."""
    tensors, kind, group_size = args
    if kind not in (FLOAT, INT8, INT4) or tensors[0].shape[0] < 2:
        return args
    half = tensors[0].shape[0] // 2
    return ([t[:half] for t in tensors] + [t[half:] for t in tensors]), SPLIT + kind, group_size


def _table_args(table: Any) -> tuple[list[Tensor], int, int] | None:
    """An embedding table for the frame op: float32 rows (kind 0) or int8 rows with scales (kind 1), or None."""
    if isinstance(table, Tensor):
        return ([table.contiguous()], 0, 0) if table.dtype == torch.float32 and table.dim() == 2 else None
    if type(table) is Int8Weight and table.q.dim() == 2 and table.dtype == torch.float32:
        return [table.q.contiguous(), table.scale.contiguous()], 1, table.group_size
    return None


def _norm_gain(norm: nn.Module) -> tuple[Tensor, float] | None:
    if isinstance(norm, nn.Identity):
        return torch.empty(0), 0.0
    if isinstance(norm, RMSNorm) and norm.alpha.dtype == torch.float32:
        return norm.alpha.reshape(-1).contiguous(), norm.eps
    return None


class NativeDepformer:
    """The kernel's argument lists per codebook (built on first use) and the call."""

    def __init__(self, depformer: nn.Module, op: Any, frame_op: Any = None):
        self.depformer, self.op, self.frame_op = depformer, op, frame_op
        self.frame_threads = FRAME_THREADS
        self._frames: dict[bool, Any] = {}  # the frame op's lists, with halved linears (HELPER) or not
        self.tuner = ModeTuner()  # AUTO's choice between SERIAL and HELPER
        self._args: dict[int, tuple[list[Tensor], list[int], list[int], float, float] | None] = {}

    def arguments(self, k: int) -> tuple[list[Tensor], list[int], list[int], float, float] | None:
        if k not in self._args:
            self._args[k] = self._build(k)
        return self._args[k]

    def _build(self, k: int, split: bool = False) -> tuple[list[Tensor], list[int], list[int], float, float] | None:
        dep = self.depformer
        weight_set = dep.config.transformer.weight_set(k)
        tensors: list[Tensor] = []
        kinds: list[int] = []
        sizes: list[int] = []
        eps = None

        def add_linear(weight: Any) -> bool:
            args = _linear_args(weight)
            if args is not None and split:
                args = _split(args)
            if args is not None:
                tensors.extend(args[0])
                kinds.append(args[1])
                sizes.append(args[2])
            return args is not None

        for layer in cast(list[TransformerLayer], list(dep.transformer.layers)):
            ffn = layer.gating[weight_set] if layer.per_step_ffn else layer.gating
            norms = (_norm_gain(layer.norm1), _norm_gain(layer.norm2))
            if norms[0] is None or norms[1] is None or norms[0][0].numel() == 0 or not isinstance(ffn, GatedFFN):
                return None
            eps = norms[0][1]
            tensors.append(norms[0][0])
            if not (add_linear(layer.self_attn.in_proj[weight_set]) and add_linear(layer.self_attn.out_proj[weight_set])):
                return None
            tensors.append(norms[1][0])
            if not (add_linear(ffn.linear_in.weight) and add_linear(ffn.linear_out.weight)):
                return None
        out = _norm_gain(dep.out_norms[k])
        if out is None or eps is None:
            return None
        tensors.append(out[0])
        head = dep.heads[k]
        if not add_linear(head.weight):
            return None
        tensors.append(torch.empty(0) if head.bias is None else head.bias.float().contiguous())
        return tensors, kinds, sizes, eps, out[1]

    def frame_arguments(self, split: bool = False) -> FrameArguments | None:
        """The frame op's lists for all codebooks (built once per ``split``: the native linears halved for HELPER
        on int8 / int4 models), or None when a codebook cannot run natively."""
        if split not in self._frames:
            self._frames[split] = self._build_frame(split)
        return self._frames[split]

    def _build_frame(self, split: bool) -> FrameArguments | None:
        dep = self.depformer
        tensors: list[Tensor] = []
        kinds: list[int] = []
        sizes: list[int] = []
        starts, linear_starts, out_eps = [0], [0], []
        codebooks = []
        for k in range(dep.config.num_codebooks):
            parts = [_linear_args(dep.input_projs[dep.config.input_schedule[k]].weight)]
            if k > 0:
                embedding = dep.audio_emb[k - 1]
                if embedding.demux:
                    return None
                parts.append(_table_args(embedding.weight))
                low_rank = embedding.low_rank
                parts.append(([], NO_LINEAR, 0) if low_rank is None else _linear_args(low_rank.weight))
            if any(part is None for part in parts):
                return None
            codebooks.append(parts)
        # every linear here is a native kernel (float32, int8, int4), whose outputs do not depend on the thread
        # split: HELPER may halve them between two threads (one parallel region per frame)
        for k, parts in enumerate(codebooks):
            stack = self._build(k, split) if split else self.arguments(k)
            if stack is None:
                return None
            parts = [_split(part) if split and i != 1 else part for i, part in enumerate(parts)]
            for part in parts:
                tensors.extend(part[0])
                kinds.append(part[1])
                sizes.append(part[2])
            tensors.extend(stack[0])
            kinds.extend(stack[1])
            sizes.extend(stack[2])
            starts.append(len(tensors))
            linear_starts.append(len(kinds))
            out_eps.append(stack[4])
        return tensors, kinds, sizes, starts, linear_starts, out_eps

    def threads_mode(self) -> int:
        """POOL, SERIAL or HELPER: :attr:`frame_threads` resolved (AUTO: the tuner's choice)."""
        return self.tuner.choose() if self.frame_threads == AUTO else self.frame_threads

    def frame(self, first: Tensor, hidden: Tensor, keys: Tensor, values: Tensor, count: int, temp: float,
              top_k: int, cfg_coef: float, generator: torch.Generator | None) -> Tensor | None:
        """Tokens ``[B, count]`` of the first ``count`` codebooks from the backbone output ``hidden`` ``[R, 1, D]``
        and codebook 0's embedded input ``first`` ``[R, 1, Dd]`` (``R = 2B`` under CFG: ``cfg_coef`` != 1), sampled
        as :func:`~dsmcli.engine.sampling.sample_token` samples (None: not supported here)."""
        if self.frame_arguments() is None:
            return None
        mode = self.threads_mode()
        args = self.frame_arguments(mode == HELPER)
        assert args is not None
        tensors, kinds, sizes, starts, linear_starts, out_eps = args
        start = time.perf_counter()
        tokens = self.frame_op(hidden[:, 0].contiguous(), first[:, 0].contiguous(), tensors, kinds, sizes, starts,
                               linear_starts, keys, values, count, self.depformer.config.transformer.num_heads,
                               args_eps(self.arguments(0)), out_eps, float(temp), int(top_k), float(cfg_coef),
                               generator, mode)
        if self.frame_threads == AUTO and mode != POOL and count == self.depformer.config.num_codebooks:
            self.tuner.record(mode, time.perf_counter() - start)  # full frames only: comparable times
        return tokens

    def logits(self, k: int, x: Tensor, keys: Tensor, values: Tensor) -> Tensor | None:
        """Logits ``[B, card]`` of codebook ``k`` from its input ``x`` ``[B, 1, D]`` (None: not supported)."""
        args = self.arguments(k)
        if args is None:
            return None
        tensors, kinds, sizes, eps, out_eps = args
        return self.op(x[:, 0].contiguous(), tensors, kinds, sizes, keys, values, k,
                       self.depformer.config.transformer.num_heads, eps, out_eps)


def args_eps(args: tuple[list[Tensor], list[int], list[int], float, float] | None) -> float:
    return 0.0 if args is None else args[3]


def native_depformer(depformer: nn.Module, dtype: torch.dtype, device: torch.device,
                     kernels: KernelChoice = KernelChoice.AUTO) -> NativeDepformer | None:
    """A :class:`NativeDepformer` for ``depformer`` when its layout, dtype and device allow it and ``kernels``
    lets the kernels run (and they build here); None otherwise."""
    cfg = depformer.config.transformer
    layout_ok = (not cfg.positional_embedding.uses_sin and not cfg.positional_embedding.uses_rope
                 and cfg.gating is Activation.SILU and cfg.layer_scale is None and not cfg.cross_attention
                 and (cfg.context is None or cfg.context >= depformer.config.num_codebooks))
    fits = layout_ok and dtype == torch.float32 and device.type == "cpu"
    op = depformer_step_op(kernels, fits)
    if op is None or fp32_linear_op(kernels) is None:
        return None
    return NativeDepformer(depformer, op, depformer_frame_op(kernels))
