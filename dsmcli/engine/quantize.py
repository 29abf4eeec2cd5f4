"""Int8 and int4 quantization of the LM's weights (``--quantize int8|int4``; ``load_lm(..., quantize=...)``).

Every linear weight of the backbone, the depformer, the text/audio heads and the demuxed text embedding is
stored as int8 with one float32 scale per output channel and per group of :data:`GROUP_SIZE` input channels
(symmetric, ``scale = max|group| / 127``), or as 4-bit codes in [-8, 7] (two per byte) with one scale per
group of :data:`INT4_GROUP_SIZE` (the scale of each group chosen among a few clipping ratios for the least
squared error); the float conditioners are left alone (they run once per stream). The token embedding tables
are stored as int8 in both modes (a few rows are read per step; they were a third of the float leftovers).
Group-wise scales follow the weights' local range: on the stt-1b architecture the int8 text logits stay within
cosine 0.999 of the float path, where one scale per output channel does not (see benchmarks/README.md); int4 is
much further off on random weights (a harsh case for 4 bits: int8 stays the recommended CPU mode). A quantized
weight is declared in its module under the float parameter's name as an :class:`Int8Weight` / :class:`Int4Weight`
submodule holding ``q`` and ``scale`` buffers (so ``state_dict()`` lists them and ``.to(device)`` moves them);
the model's own ``F.linear`` / ``F.embedding`` calls dispatch to it (``__torch_function__``), so the network code
is unchanged and the default (unquantized) path is untouched.

A model loaded with ``quantize=`` (or drawn with random weights by ``dsm bench``) is built quantized, weight by
weight as it is read (:class:`WeightQuantizer`, ``LM.from_module_state``): no float copy of the quantized weights
ever exists, so the peak memory is the quantized model plus one float weight. :func:`quantize_lm` returns such a
model built from one already loaded (which it consumes). Either way ``LM.quantization`` records what was done
(:class:`QuantizeReport`), and that record, the device and the stream's ``EngineOptions.kernels`` decide, when a
stream is made, whether it attends with the native CPU attention kernel over float16 KV rings
(``LM.attention_kernels``, see :mod:`dsmcli.nn.kv_rings`): with the 750-step window full, the KV reads cost
more than the int8 weights at batch 16, and SDPA read them at half the machine's bandwidth. Nothing is patched
onto the model's modules.

Kernels (:class:`Int8Kernel`, within the load's :class:`~dsmcli.kernels.KernelChoice`: ``torch`` means
``dequantize``), both reading the same int8 weights:

* ``native``: ``dsmcli/kernels/int8_linear.cpp`` / ``int4_linear.cpp``, compiled on first use (AVX-512 VNNI where
  the CPU has it). Each activation row is carried as int16 with its own scale (error ~2^-16 of the row's peak)
  and multiplied in exact integer arithmetic per group; they stream the weights at close to memory speed at
  batch 1 and every row's result is independent of its batch mates, bit for bit.
* ``dequantize``: pure torch, ``F.linear`` with the weight dequantized on the fly to the activations' dtype. Used
  off CPU, when the native kernel cannot be built, and for weights whose input width is not a multiple of
  :data:`NATIVE_GROUP_MULTIPLE` (tiny test models). Correct everywhere, not fast on CPU.
* ``auto`` (default): ``native`` where it applies, else ``dequantize``.

Measurements behind these choices are in benchmarks/README.md. Quantized weights are not parameters (their
buffers are in ``state_dict()`` as ``<weight>.q`` / ``<weight>.scale``): quantize *after* moving the model to its
device (``.to(device)`` moves the buffers; a dtype cast leaves them: the codes are integers, the scales stay
float32).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsmcli.engine.embeddings import TokenEmbedding
from dsmcli.engine.transformer import CrossAttention, SelfAttention
from dsmcli.kernels import KernelChoice
from dsmcli.kernels.linear import int4_linear_op, int8_linear_op

M = TypeVar("M", bound=nn.Module)
INT8_MAX = 127  # symmetric range [-127, 127]: -128 is never produced
GROUP_SIZE = 128  # input channels sharing one scale (per output channel)
INT4_MIN, INT4_MAX = -8, 7  # 4-bit range (stored as nibbles q + 8)
INT4_GROUP_SIZE = 64  # int4: input channels sharing one scale (finer than int8: 4 bits need it)
INT4_BLOCK = 64  # int4 packing: per block of 64 inputs, byte i = input i (low nibble) | input i + 32 (high)
INT4_CLIP_RATIOS = (1.0, 0.9, 0.8)  # scale = ratio * max|group| / 7: the least squared error wins (per group)
NATIVE_GROUP_MULTIPLE = 64  # the native kernel's group sizes: multiples of this ...
NATIVE_MAX_GROUP = 256  # ... up to this (its int32 lanes cannot overflow)
TINY_SCALE = 1e-12  # floor of a scale (all-zero groups)
SKIPPED_PREFIXES = ("conditioning.",)  # float32 conditioners, run once per stream
ATTENTION_WEIGHTS = ("in_proj", "out_proj")  # stacked ``[W, out, in]`` projection parameters


class QuantMethod(str, Enum):
    """What ``--quantize`` accepts."""

    NONE = "none"
    INT8 = "int8"
    INT4 = "int4"


class Int8Kernel(str, Enum):
    """How an :class:`Int8Weight` multiplies (see the module docstring)."""

    AUTO = "auto"
    NATIVE = "native"
    DEQUANTIZE = "dequantize"


def group_size_for(in_features: int, preferred: int = GROUP_SIZE) -> int:
    """The group size used for a weight with ``in_features`` inputs: ``preferred`` when it divides them, else the
    largest multiple of :data:`NATIVE_GROUP_MULTIPLE` below it that does, else one group per row."""
    for size in range(preferred, 0, -NATIVE_GROUP_MULTIPLE):
        if size % NATIVE_GROUP_MULTIPLE == 0 and in_features % size == 0:
            return size
    return in_features


def quantize_rows(weight: Tensor, group_size: int = GROUP_SIZE) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per (output channel, group of ``group_size`` inputs): ``[..., out, in]`` float ->
    (int8 ``[..., out, in]``, float32 scales ``[..., out, in / group_size]``), ``weight ≈ q * scale`` per group."""
    w = weight.detach().float()
    if w.shape[-1] % group_size:
        raise ValueError(f"group size {group_size} does not divide the input width {w.shape[-1]}")
    grouped = w.unflatten(-1, (-1, group_size))  # [..., out, G, gs]
    scale = (grouped.abs().amax(dim=-1) / INT8_MAX).clamp(min=TINY_SCALE)
    q = torch.round(grouped / scale[..., None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.flatten(-2).contiguous(), scale.contiguous()


SLICE_VALUES = 1 << 22  # quantize_in_slices: weight values quantized at a time (16 MB as float32: its temporaries
# stay above glibc's mmap threshold, MMAP_THRESHOLD, so they go back to the system when freed, not into the heap)


def quantize_in_slices(quantize: Callable[[Tensor, int], tuple[Tensor, Tensor]], weight: Tensor, group_size: int,
                       pack: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """``quantize(weight, group_size)`` (:func:`quantize_rows`, :func:`quantize_rows_int4`), then ``pack`` on the
    codes, done a block of rows at a time into the outputs: every row is quantized on its own, so the result is
    the same bit for bit, but the float temporaries (the float32 copy of a bfloat16 weight, its grouped absolute
    values, quotients) are those of one block of :data:`SLICE_VALUES`, not of a whole stacked ``[W, out, in]``
    weight (hundreds of MB in float32)."""
    width = weight.shape[-1]
    rows = weight.reshape(-1, width)  # a view of a contiguous weight
    block = max(1, SLICE_VALUES // max(1, width))
    if rows.shape[0] <= block:
        q, scale = quantize(weight, group_size)
        return (q if pack is None else pack(q)), scale
    codes: Tensor | None = None
    scales: Tensor | None = None
    for start in range(0, rows.shape[0], block):
        q, scale = quantize(rows[start:start + block], group_size)
        if pack is not None:
            q = pack(q)
        if codes is None or scales is None:
            codes = q.new_empty(rows.shape[0], q.shape[-1])
            scales = scale.new_empty(rows.shape[0], scale.shape[-1])
        codes[start:start + block] = q
        scales[start:start + block] = scale
        del q, scale
    assert codes is not None and scales is not None
    return codes.view(*weight.shape[:-1], -1), scales.view(*weight.shape[:-1], -1)


class Int8Weight(nn.Module):
    """A linear weight ``[..., out, in]`` held as int8 ``q`` plus float32 ``scale`` ``[..., out, in / group]``
    (registered buffers: they are in ``state_dict()`` and follow ``.to(device)``; ``group_sums``, derived, is not
    saved).

    Sits in its module under the float parameter's name (``linear.weight``, ``self_attn.in_proj``), a submodule
    instead of a parameter: ``F.linear(x, w, b)`` dispatches here, integer/slice indexing of the leading dims and of
    the output dim works (``in_proj[k]``, ``in_proj[0, :dim]``), and ``dtype``/``device`` report the compute dtype
    (the replaced weight's) and device. Other operations raise. ``kernel`` and ``kernels`` (the load's
    :class:`~dsmcli.kernels.KernelChoice`) decide whether the native kernel multiplies.
    """

    bits = "int8"
    q: Tensor
    scale: Tensor
    group_sums: Tensor

    def __init__(self, q: Tensor, scale: Tensor, dtype: torch.dtype, kernel: Int8Kernel,
                 kernels: KernelChoice = KernelChoice.AUTO, group_sums: Tensor | None = None):
        super().__init__()
        self._hold(q, scale, dtype, kernel, kernels, torch.int8, q.shape[-1])
        # [..., out, G]: the native kernel's (an indexed view passes its slice of its parent's)
        self.register_buffer("group_sums", self._group_sums() if group_sums is None else group_sums, persistent=False)

    def _hold(self, q: Tensor, scale: Tensor, dtype: torch.dtype, kernel: Int8Kernel, kernels: KernelChoice | str,
              code_dtype: torch.dtype, width: int) -> None:
        """What both widths hold: ``q`` (``code_dtype``, ``width`` inputs per row) and ``scale`` as buffers, the
        compute dtype, the kernel choices, and the derived state reset after ``load_state_dict``."""
        if q.dtype != code_dtype or q.shape[:-1] != scale.shape[:-1] or width % scale.shape[-1]:
            raise ValueError(f"{self.bits} data {tuple(q.shape)} {q.dtype} does not match scales "
                             f"{tuple(scale.shape)}")
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.dtype, self.kernel, self.kernels = dtype, kernel, KernelChoice(kernels)
        self.group_size = width // scale.shape[-1]
        self._views: dict[str, Int8Weight] = {}  # indexed views (``in_proj[k]`` runs every step)
        self._native: Any = None  # the native op once resolved, False when this weight cannot use it
        self.register_load_state_dict_post_hook(lambda module, _incompatible: module._loaded())

    def _group_sums(self) -> Tensor:
        return self.q.unflatten(-1, (-1, self.group_size)).sum(dim=-1, dtype=torch.int32).contiguous()

    def _loaded(self) -> None:
        """After ``load_state_dict`` (new codes): the derived sums are recomputed, views and kernel resolved again."""
        self.group_sums = self._group_sums()
        self._forget()

    def _forget(self) -> None:
        self._views.clear()
        self._native = None

    @classmethod
    def from_float(cls, weight: Tensor, kernel: Int8Kernel = Int8Kernel.AUTO, group_size: int = GROUP_SIZE,
                   kernels: KernelChoice = KernelChoice.AUTO) -> Int8Weight:
        q, scale = quantize_in_slices(quantize_rows, weight, group_size_for(weight.shape[-1], group_size))
        return cls(q, scale, weight.dtype, kernel, kernels)

    def _apply(self, fn: Any, recurse: bool = True) -> Int8Weight:
        self._forget()  # moved buffers: the views and the resolved kernel are recomputed
        scale = self.scale
        super()._apply(fn, recurse)
        if self.scale.dtype != scale.dtype:  # a model-wide dtype cast: the scales stay as they were (float32)
            self.scale = scale.to(self.scale.device)
        return self

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def ndim(self) -> int:
        return self.q.dim()

    def dim(self) -> int:
        return self.q.dim()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.scale, self.group_sums))

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """The float weight it approximates, ``[..., out, in]`` in ``dtype`` (default :attr:`dtype`)."""
        grouped = self.q.unflatten(-1, (-1, self.group_size)).float() * self.scale[..., None]
        return grouped.flatten(-2).to(dtype or self.dtype)

    def rows(self, ids: Tensor) -> Tensor:
        """``F.embedding(ids, W)``: the dequantized rows ``ids`` ``[...]`` -> ``[..., in]`` (an embedding table)."""
        scale = self.scale[ids]
        return (self._codes(ids).unflatten(-1, (-1, self.group_size)).float() * scale[..., None]).flatten(-2).to(
            self.dtype)

    def _codes(self, ids: Tensor) -> Tensor:
        return self.q[ids]

    def __getitem__(self, index: Any) -> Int8Weight:
        parts = index if isinstance(index, tuple) else (index,)
        if len(parts) >= self.q.dim() or not all(isinstance(p, (int, slice)) for p in parts):
            raise IndexError(f"{type(self).__name__}{tuple(self.shape)} can only be indexed by ints / slices over "
                             f"the leading and output dims, not {index!r}")
        key = repr(index)
        if key not in self._views:
            self._views[key] = self._view(index)
        return self._views[key]

    def _view(self, index: Any) -> Int8Weight:
        return Int8Weight(self.q[index].contiguous(), self.scale[index].contiguous(), self.dtype, self.kernel,
                          self.kernels, self.group_sums[index].contiguous())

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(shape={tuple(self.shape)}, group_size={self.group_size}, dtype={self.dtype}, "
                f"kernel={self.kernel.value})")

    def resolved_kernel(self) -> Int8Kernel:
        """The kernel that actually runs for this weight (``auto`` resolved; ``native`` falls back when it cannot
        run). Decided once per weight."""
        if self._native is None:
            fits = (self.device.type == "cpu" and self.group_size % NATIVE_GROUP_MULTIPLE == 0
                    and self.group_size <= NATIVE_MAX_GROUP)
            choice = KernelChoice.TORCH if self.kernel is Int8Kernel.DEQUANTIZE else self.kernels
            self._native = int8_linear_op(choice, fits) or False
        return Int8Kernel.NATIVE if self._native else Int8Kernel.DEQUANTIZE

    def linear(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """``x`` ``[..., in]`` -> ``x @ W.T + bias`` ``[..., out]`` in ``x``'s dtype."""
        if self.q.dim() != 2:
            raise ValueError(f"F.linear needs a 2-D weight, this one is {tuple(self.shape)}: index it first")
        if self.resolved_kernel() is Int8Kernel.NATIVE:
            flat = x.reshape(-1, x.shape[-1])
            if flat.dtype != torch.float32 or not flat.is_contiguous():
                flat = flat.float().contiguous()
            out = self._native_linear(flat)
            out = out.view(*x.shape[:-1], out.shape[-1])
            if x.dtype != torch.float32:
                out = out.to(x.dtype)
        else:
            out = F.linear(x, self.dequantize(x.dtype))
        return out if bias is None else out + bias

    def _native_linear(self, flat: Tensor) -> Tensor:
        return self._native(flat, self.q, self.scale, self.group_sums, self.group_size)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is F.linear:
            bound = dict(zip(("input", "weight", "bias"), args), **(kwargs or {}))
            weight = bound["weight"]
            if isinstance(weight, Int8Weight) and not isinstance(bound["input"], Int8Weight):
                return weight.linear(bound["input"], bound.get("bias"))
        if func is F.embedding and len(args) == 2 and isinstance(args[1], Int8Weight):
            options = kwargs or {}
            if options.get("padding_idx") is None and options.get("max_norm") is None:
                return args[1].rows(args[0])
        name = getattr(func, "__name__", str(func))
        raise TypeError(f"{name} is not supported on an {cls.bits}-quantized weight (only F.linear and indexing)")


def int4_block(in_features: int) -> int:
    """Inputs per packed int4 block: :data:`INT4_BLOCK`, or the whole row when the width is not a multiple of it
    (tiny models; the row must then be even)."""
    if in_features % INT4_BLOCK == 0:
        return INT4_BLOCK
    if in_features % 2:
        raise ValueError(f"int4 packs two inputs per byte: the input width {in_features} must be even")
    return in_features


def quantize_rows_int4(weight: Tensor, group_size: int = INT4_GROUP_SIZE) -> tuple[Tensor, Tensor]:
    """Symmetric 4-bit per (output channel, group of ``group_size`` inputs): ``[..., out, in]`` float -> (codes
    ``q`` int8 in [-8, 7] ``[..., out, in]``, float32 scales ``[..., out, in / group_size]``), ``weight ≈ q * scale``.
    Each group's scale is ``r * max|group| / 7`` for the ratio ``r`` of :data:`INT4_CLIP_RATIOS` with the least
    squared error (clipping the few largest values pays for finer steps everywhere else)."""
    w = weight.detach().float()
    if w.shape[-1] % group_size:
        raise ValueError(f"group size {group_size} does not divide the input width {w.shape[-1]}")
    grouped = w.unflatten(-1, (-1, group_size))  # [..., out, G, gs]
    peak = grouped.abs().amax(dim=-1).clamp(min=TINY_SCALE) / INT4_MAX
    best_scale, best_error = peak, None
    for ratio in INT4_CLIP_RATIOS:
        scale = peak * ratio
        q = torch.round(grouped / scale[..., None]).clamp_(INT4_MIN, INT4_MAX)
        error = (q.mul_(scale[..., None]) - grouped).square_().sum(dim=-1)
        if best_error is None:
            best_error = error
        else:
            better = error < best_error
            best_scale, best_error = torch.where(better, scale, best_scale), torch.where(better, error, best_error)
        del q, error
    q = torch.round(grouped / best_scale[..., None]).clamp_(INT4_MIN, INT4_MAX).to(torch.int8)
    return q.flatten(-2).contiguous(), best_scale.contiguous()


def pack_int4(q: Tensor) -> Tensor:
    """Codes ``[..., K]`` in [-8, 7] -> nibbles ``[..., K / 2]`` uint8 (layout: :data:`INT4_BLOCK`)."""
    block = int4_block(q.shape[-1])
    u = (q.to(torch.int16) - INT4_MIN).to(torch.uint8).unflatten(-1, (-1, 2, block // 2))
    return (u[..., 0, :] | (u[..., 1, :] << 4)).flatten(-2).contiguous()


def unpack_int4(packed: Tensor) -> Tensor:
    """The inverse of :func:`pack_int4`: ``[..., K / 2]`` uint8 -> codes ``[..., K]`` int8."""
    half = int4_block(2 * packed.shape[-1]) // 2
    blocks = packed.unflatten(-1, (-1, half))
    u = torch.stack([blocks & 0x0F, blocks >> 4], dim=-2)  # [..., K / block, 2, block / 2]
    return (u.flatten(-3).to(torch.int8) + INT4_MIN).contiguous()


class Int4Weight(Int8Weight):
    """A linear weight ``[..., out, in]`` held as packed 4-bit codes ``q`` ``[..., out, in / 2]`` (uint8, see
    :func:`pack_int4`) plus float32 ``scale`` ``[..., out, in / group]``; the same stand-in as
    :class:`Int8Weight` (``F.linear`` and indexing), multiplied by ``dsmcli/kernels/int4_linear.cpp``
    (``native``) or dequantized on the fly (``dequantize``)."""

    bits = "int4"

    def __init__(self, q: Tensor, scale: Tensor, dtype: torch.dtype, kernel: Int8Kernel,
                 kernels: KernelChoice = KernelChoice.AUTO):
        nn.Module.__init__(self)  # no group sums: the int4 kernel does not take them
        self._hold(q, scale, dtype, kernel, kernels, torch.uint8, 2 * q.shape[-1])

    def _loaded(self) -> None:
        self._forget()

    @classmethod
    def from_float(cls, weight: Tensor, kernel: Int8Kernel = Int8Kernel.AUTO, group_size: int = INT4_GROUP_SIZE,
                   kernels: KernelChoice = KernelChoice.AUTO) -> Int4Weight:
        q, scale = quantize_in_slices(quantize_rows_int4, weight, group_size_for(weight.shape[-1], group_size),
                                      pack=pack_int4)
        return cls(q, scale, weight.dtype, kernel, kernels)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.q.shape[:-1], 2 * self.q.shape[-1]))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.scale))

    def _codes(self, ids: Tensor) -> Tensor:
        return unpack_int4(self.q[ids])

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        grouped = unpack_int4(self.q).unflatten(-1, (-1, self.group_size)).float() * self.scale[..., None]
        return grouped.flatten(-2).to(dtype or self.dtype)

    def _view(self, index: Any) -> Int8Weight:
        return Int4Weight(self.q[index].contiguous(), self.scale[index].contiguous(), self.dtype, self.kernel,
                          self.kernels)

    def resolved_kernel(self) -> Int8Kernel:
        if self._native is None:
            fits = (self.device.type == "cpu" and self.group_size % NATIVE_GROUP_MULTIPLE == 0
                    and self.group_size <= NATIVE_MAX_GROUP and self.shape[-1] % INT4_BLOCK == 0)
            choice = KernelChoice.TORCH if self.kernel is Int8Kernel.DEQUANTIZE else self.kernels
            self._native = int4_linear_op(choice, fits) or False
        return Int8Kernel.NATIVE if self._native else Int8Kernel.DEQUANTIZE

    def _native_linear(self, flat: Tensor) -> Tensor:
        return self._native(flat, self.q, self.scale, self.group_size)


WEIGHT_CLASSES: dict[QuantMethod, type[Int8Weight]] = {QuantMethod.INT8: Int8Weight, QuantMethod.INT4: Int4Weight}
DEFAULT_GROUP_SIZES = {QuantMethod.INT8: GROUP_SIZE, QuantMethod.INT4: INT4_GROUP_SIZE}


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_lm` did: ``tensors`` weights replaced holding ``params`` values, ``native_tensors`` of
    them on the native kernel; bytes before/after."""

    method: QuantMethod
    kernel: Int8Kernel
    tensors: int
    params: int
    bytes_before: int
    bytes_after: int
    group_size: int = GROUP_SIZE
    native_tensors: int = 0
    embeddings: int = 0  # token embedding tables stored as int8 (not counted in ``tensors``)

    @property
    def kernel_used(self) -> str:
        """``native``, ``dequantize``, ``mixed`` (some of each) or ``none``."""
        if not self.tensors:
            return "none"
        if self.native_tensors == self.tensors:
            return Int8Kernel.NATIVE.value
        return Int8Kernel.DEQUANTIZE.value if not self.native_tensors else "mixed"


def _linear_weights(lm: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """(qualified module name, module, attribute) of every float linear weight and token embedding table to
    quantize."""
    for name, module in lm.named_modules():
        if f"{name}.".startswith(SKIPPED_PREFIXES):
            continue
        attributes: tuple[str, ...] = ()
        if isinstance(module, (nn.Linear, TokenEmbedding)):
            attributes = ("weight",)
        elif isinstance(module, (SelfAttention, CrossAttention)):
            attributes = ATTENTION_WEIGHTS
        for attribute in attributes:
            if isinstance(module._parameters.get(attribute), Tensor):
                yield name, module, attribute


def quantization_targets(lm: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Qualified parameter name -> (module, attribute) of every weight :func:`quantize_lm` replaces (works on a
    model built on the meta device: nothing is read)."""
    return {f"{name}.{attribute}" if name else attribute: (module, attribute)
            for name, module, attribute in _linear_weights(lm)}


MMAP_THRESHOLD = 1 << 20  # glibc: blocks this large are mapped on their own, and unmapped when freed
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


@functools.cache
def _unmap_large_blocks() -> None:
    """Make glibc return large freed blocks to the system at once. By default its mmap threshold grows to the size
    of the largest block freed (up to 32 MB), so the float weights freed while quantizing went back to the heap,
    fragmented by the quantized weights allocated between them: the process kept ~1 GB it no longer used (TTS 1.6B,
    int8). A fixed threshold stops that. At 1 MB rather than 4 MB, the per-layer state of a stream (KV rings, the
    cross-attention keys/values of a voice, 2-3 MB each at batch 1) and the temporaries around it are mapped too,
    and no longer leave holes in the heap: the process peak of `dsm bench ... --quantize int8` (tts-1.6b) fell by
    ~60 MB, with no slower step (no per-step block of a batch-1 stream is that large). Nothing happens off glibc."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None)
        if hasattr(libc, "gnu_get_libc_version"):
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except OSError:
        pass


class WeightQuantizer:
    """Replaces float weights by quantized ones one at a time and tallies the :class:`QuantizeReport`: what
    :func:`quantize_lm` does to a whole model, and what loading does weight by weight (so that a quantized model
    never holds a float copy of the weights it quantizes: ``LM.from_state(..., quantize=...)``). ``kernels``: the
    :class:`~dsmcli.kernels.KernelChoice` of the quantized weights' native linears."""

    def __init__(self, method: QuantMethod | str, kernel: Int8Kernel | str = Int8Kernel.AUTO,
                 group_size: int | None = None, kernels: KernelChoice | str = KernelChoice.AUTO):
        self.method, self.kernel, self.kernels = QuantMethod(method), Int8Kernel(kernel), KernelChoice(kernels)
        if self.method is QuantMethod.NONE:
            raise ValueError("WeightQuantizer needs a quantization method (int8, int4)")
        self.group_size = DEFAULT_GROUP_SIZES[self.method] if group_size is None else group_size
        self.weight_class = WEIGHT_CLASSES[self.method]
        _unmap_large_blocks()
        self.tensors = self.params = self.before = self.after = self.native = self.embeddings = 0

    def replace(self, module: nn.Module, attribute: str, weight: Tensor) -> None:
        """Declare the quantized ``weight`` as ``module``'s submodule ``attribute`` (an :class:`Int8Weight` /
        :class:`Int4Weight` holding buffers) in place of the float parameter of that name, which is dropped (the
        float tensor is not kept). Token embedding tables are stored as int8 whatever the method (a few rows are
        read per step: precision is cheap there)."""
        if isinstance(module, TokenEmbedding):
            quantized: Int8Weight = Int8Weight.from_float(weight, Int8Kernel.DEQUANTIZE)
            self.embeddings += 1
        else:
            quantized = self.weight_class.from_float(weight, self.kernel, self.group_size, self.kernels)
            self.native += quantized.resolved_kernel() is Int8Kernel.NATIVE
            self.tensors += 1
        del module._parameters[attribute]
        module.register_module(attribute, quantized)
        self.params += weight.numel()
        self.before += weight.numel() * weight.element_size()
        self.after += quantized.nbytes

    def report(self) -> QuantizeReport:
        return QuantizeReport(self.method, self.kernel, self.tensors, self.params, self.before, self.after,
                              self.group_size, self.native, self.embeddings)


def quantized_state(lm: nn.Module) -> dict[str, Tensor]:
    """The buffers of ``lm``'s quantized weights by qualified name (what ``state_dict()`` lists for them)."""
    return {f"{name}.{key}": tensor for name, module in lm.named_modules() if isinstance(module, Int8Weight)
            for key, tensor in module.state_dict(keep_vars=True).items()}


def quantize_lm(lm: M, method: QuantMethod | str = QuantMethod.INT8, kernel: Int8Kernel | str = Int8Kernel.AUTO,
                group_size: int | None = None, kernels: KernelChoice | str = KernelChoice.AUTO) -> M:
    """A quantized copy of ``lm`` (see the module docstring), built like a model loaded with ``quantize=``: a new
    model of ``lm``'s class, whose :attr:`quantization` is the :class:`QuantizeReport`. ``lm`` is consumed: its
    tensors move to the new model (or are freed once quantized) and it is left empty, unusable. ``method="none"``
    returns ``lm`` itself. ``group_size`` defaults to the method's (int8: 128, int4: 64); ``kernels``: the native
    linears' :class:`~dsmcli.kernels.KernelChoice`.

    Call it after the model is on its device. Each float weight is dropped as soon as its quantized copy exists,
    so the peak memory is the float model plus one weight; loading with ``quantize=`` avoids the float model.
    """
    if QuantMethod(method) is QuantMethod.NONE:
        return lm
    quantizer = WeightQuantizer(method, kernel, group_size, kernels)
    dtype, source = lm.dtype, f"quantize_lm({type(lm).__name__})"
    state = {key: tensor.detach() for key, tensor in lm.state_dict(keep_vars=True).items()}
    for module in lm.modules():  # the tensors now live in ``state`` only: each is freed as it is quantized
        module._parameters.clear()
        module._buffers.clear()
    return type(lm).from_module_state(lm.config, state, dtype, source, quantizer)
