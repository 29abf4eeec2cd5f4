"""Int8 quantization of the LM's linear weights, applied after loading (``quantize_lm(lm, "int8")``).

Every linear weight of the backbone, the depformer, the text/audio heads and the demuxed text embedding is
stored as int8 with one float32 scale per output channel and per group of :data:`GROUP_SIZE` input channels
(symmetric, ``scale = max|group| / 127``); the float conditioners are left alone (they run once per stream).
Group-wise scales follow the weights' local range: on the stt-1b architecture the text logits stay within cosine
0.999 of the float path, where one scale per output channel does not (see benchmarks/README.md). The weights are
swapped for :class:`Int8Weight`, a tensor-like object that the model's own ``F.linear`` calls dispatch to
(``__torch_function__``), so the network code is unchanged and the default (unquantized) path is untouched.
A quantized LM also attends with the native CPU attention kernel over float16 KV rings (``LM.native_attention``,
see :mod:`dsmcli.engine.kv_rings`): with the 750-step window full, the KV reads cost more than the int8 weights
at batch 16, and SDPA read them at half the machine's bandwidth.

Kernels (:class:`Int8Kernel`), both reading the same int8 weights:

* ``native``: ``dsmcli/kernels/int8_linear.cpp``, compiled on first use (AVX-512 VNNI where the CPU has it). Each
  activation row is carried as int16 with its own scale (error ~2^-16 of the row's peak) and multiplied in
  exact integer arithmetic per group; it streams the int8 weights at close to memory speed at batch 1 and
  every row's result is independent of its batch mates, bit for bit.
* ``dequantize``: pure torch, ``F.linear`` with the weight dequantized on the fly to the activations' dtype. Used
  off CPU, when the native kernel cannot be built, and for weights whose input width is not a multiple of
  :data:`NATIVE_GROUP_MULTIPLE` (tiny test models). Correct everywhere, not fast on CPU.
* ``auto`` (default): ``native`` where it applies, else ``dequantize``.

Measurements behind these choices are in benchmarks/README.md. Quantized weights are not parameters: quantize
*after* moving the model to its device; ``state_dict()`` no longer lists them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsmcli.engine.transformer import CrossAttention, SelfAttention
from dsmcli.kernels import decode_attention_op, int8_linear_op

INT8_MAX = 127  # symmetric range [-127, 127]: -128 is never produced
GROUP_SIZE = 128  # input channels sharing one scale (per output channel)
NATIVE_GROUP_MULTIPLE = 64  # the native kernel's group sizes: multiples of this ...
NATIVE_MAX_GROUP = 256  # ... up to this (its int32 lanes cannot overflow)
TINY_SCALE = 1e-12  # floor of a scale (all-zero groups)
SKIPPED_PREFIXES = ("conditioning.",)  # float32 conditioners, run once per stream
ATTENTION_WEIGHTS = ("in_proj", "out_proj")  # stacked ``[W, out, in]`` projection parameters


class QuantMethod(str, Enum):
    """What ``--quantize`` accepts."""

    NONE = "none"
    INT8 = "int8"


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


class Int8Weight:
    """A linear weight ``[..., out, in]`` held as int8 ``q`` plus float32 ``scale`` ``[..., out, in / group]``.

    Stands in for the float parameter it replaces: ``F.linear(x, w, b)`` dispatches here, integer/slice
    indexing of the leading dims and of the output dim works (``in_proj[k]``, ``in_proj[0, :dim]``), and
    ``dtype``/``device`` report the compute dtype (the replaced weight's) and device. Other operations raise.
    """

    def __init__(self, q: Tensor, scale: Tensor, dtype: torch.dtype, kernel: Int8Kernel):
        if q.dtype != torch.int8 or q.shape[:-1] != scale.shape[:-1] or q.shape[-1] % scale.shape[-1]:
            raise ValueError(f"int8 data {tuple(q.shape)} {q.dtype} does not match scales {tuple(scale.shape)}")
        self.q, self.scale, self.dtype, self.kernel = q, scale, dtype, kernel
        self.group_size = q.shape[-1] // scale.shape[-1]
        grouped = q.unflatten(-1, (-1, self.group_size))
        self.group_sums = grouped.sum(dim=-1, dtype=torch.int32).contiguous()  # [..., out, G]: the native kernel's
        self._views: dict[str, Int8Weight] = {}  # indexed views (``in_proj[k]`` runs every step)
        self._native: Any = None  # the native op once resolved, False when this weight cannot use it

    @classmethod
    def from_float(cls, weight: Tensor, kernel: Int8Kernel = Int8Kernel.AUTO,
                   group_size: int = GROUP_SIZE) -> Int8Weight:
        q, scale = quantize_rows(weight, group_size_for(weight.shape[-1], group_size))
        return cls(q, scale, weight.dtype, kernel)

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

    def __getitem__(self, index: Any) -> Int8Weight:
        parts = index if isinstance(index, tuple) else (index,)
        if len(parts) >= self.q.dim() or not all(isinstance(p, (int, slice)) for p in parts):
            raise IndexError(f"Int8Weight{tuple(self.shape)} can only be indexed by ints / slices over the "
                             f"leading and output dims, not {index!r}")
        key = repr(index)
        if key not in self._views:
            self._views[key] = Int8Weight(self.q[index].contiguous(), self.scale[index].contiguous(), self.dtype,
                                          self.kernel)
        return self._views[key]

    def __repr__(self) -> str:
        return (f"Int8Weight(shape={tuple(self.shape)}, group_size={self.group_size}, dtype={self.dtype}, "
                f"kernel={self.kernel.value})")

    def resolved_kernel(self) -> Int8Kernel:
        """The kernel that actually runs for this weight (``auto`` resolved; ``native`` falls back when it cannot
        run). Decided once per weight."""
        if self._native is None:
            fits = (self.device.type == "cpu" and self.group_size % NATIVE_GROUP_MULTIPLE == 0
                    and self.group_size <= NATIVE_MAX_GROUP)
            op = int8_linear_op() if self.kernel is not Int8Kernel.DEQUANTIZE and fits else None
            self._native = op or False
        return Int8Kernel.NATIVE if self._native else Int8Kernel.DEQUANTIZE

    def linear(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """``x`` ``[..., in]`` -> ``x @ W.T + bias`` ``[..., out]`` in ``x``'s dtype."""
        if self.q.dim() != 2:
            raise ValueError(f"F.linear needs a 2-D weight, this one is {tuple(self.shape)}: index it first")
        if self.resolved_kernel() is Int8Kernel.NATIVE:
            flat = x.reshape(-1, x.shape[-1])
            if flat.dtype != torch.float32 or not flat.is_contiguous():
                flat = flat.float().contiguous()
            out = self._native(flat, self.q, self.scale, self.group_sums, self.group_size)
            out = out.view(*x.shape[:-1], out.shape[-1])
            if x.dtype != torch.float32:
                out = out.to(x.dtype)
        else:
            out = F.linear(x, self.dequantize(x.dtype))
        return out if bias is None else out + bias

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is F.linear:
            bound = dict(zip(("input", "weight", "bias"), args), **(kwargs or {}))
            weight = bound["weight"]
            if isinstance(weight, Int8Weight) and not isinstance(bound["input"], Int8Weight):
                return weight.linear(bound["input"], bound.get("bias"))
        name = getattr(func, "__name__", str(func))
        raise TypeError(f"{name} is not supported on an int8-quantized weight (only F.linear and indexing)")


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

    @property
    def kernel_used(self) -> str:
        """``native``, ``dequantize``, ``mixed`` (some of each) or ``none``."""
        if not self.tensors:
            return "none"
        if self.native_tensors == self.tensors:
            return Int8Kernel.NATIVE.value
        return Int8Kernel.DEQUANTIZE.value if not self.native_tensors else "mixed"


def _linear_weights(lm: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """(qualified module name, module, attribute) of every float linear weight to quantize."""
    for name, module in lm.named_modules():
        if f"{name}.".startswith(SKIPPED_PREFIXES):
            continue
        attributes: tuple[str, ...] = ()
        if isinstance(module, nn.Linear):
            attributes = ("weight",)
        elif isinstance(module, (SelfAttention, CrossAttention)):
            attributes = ATTENTION_WEIGHTS
        for attribute in attributes:
            if isinstance(module._parameters.get(attribute), Tensor):
                yield name, module, attribute


def quantize_lm(lm: nn.Module, method: QuantMethod | str = QuantMethod.INT8,
                kernel: Int8Kernel | str = Int8Kernel.AUTO, group_size: int = GROUP_SIZE) -> QuantizeReport:
    """Quantize ``lm``'s linear weights in place (see the module docstring). ``method="none"`` does nothing.

    Call it after the model is on its device. Each float weight is dropped as soon as its int8 copy exists, so
    the peak memory is the float model plus one weight.
    """
    method, kernel = QuantMethod(method), Int8Kernel(kernel)
    tensors = params = before = after = native = 0
    if method is QuantMethod.NONE:
        return QuantizeReport(method, kernel, 0, 0, 0, 0, group_size)
    if hasattr(lm, "native_attention"):  # the int8 path is not bit-exact anyway: attention on the native kernel
        on_cpu = all(p.device.type == "cpu" for p in lm.parameters())
        lm.native_attention = on_cpu and decode_attention_op() is not None  # built now, not at the first step
    for _name, module, attribute in list(_linear_weights(lm)):
        weight = module._parameters.pop(attribute)
        assert weight is not None
        quantized = Int8Weight.from_float(weight, kernel, group_size)
        setattr(module, attribute, quantized)
        native += quantized.resolved_kernel() is Int8Kernel.NATIVE
        tensors, params = tensors + 1, params + weight.numel()
        before, after = before + weight.numel() * weight.element_size(), after + quantized.nbytes
        del weight
    return QuantizeReport(method, kernel, tensors, params, before, after, group_size, native)


def is_quantized(lm: nn.Module) -> bool:
    """True when some weight of ``lm`` is an :class:`Int8Weight`."""
    return any(isinstance(value, Int8Weight) for module in lm.modules() for value in vars(module).values())
