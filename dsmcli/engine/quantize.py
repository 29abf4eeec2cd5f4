"""Int8 quantization of the LM's linear weights, applied after loading (``quantize_lm(lm, "int8")``).

Every linear weight of the backbone, the depformer, the text/audio heads and the demuxed text embedding is
stored as int8 with one scale per output channel (symmetric, ``scale >= max|row| / 127``, rounded up to a
bfloat16 value so both kernels below use it exactly); the float conditioners are left alone (they run once per
stream). The weights are swapped for :class:`Int8Weight`, a tensor-like object that the model's own
``F.linear`` calls dispatch to (``__torch_function__``), so the network code is unchanged and the default
(unquantized) path is untouched.

Kernels (:class:`Int8Kernel`), all reading the same int8 weights:

* ``weight-only``: ``torch._weight_int8pack_mm``; activations stay float (bfloat16 on CPU: its float32 variant
  is 20-40x slower there). The most accurate: only the weights are rounded.
* ``dynamic``: each activation row is quantized to int8 on the fly with its own scale, then ``torch._int_mm``
  (oneDNN, VNNI/AMX) multiplies int8 x int8 into int32. Much faster than the weight-only kernel for many rows,
  about twice the error. A row's result never depends on the other rows of the batch (no per-tensor
  activation scale, unlike ``torch.ao`` dynamic quantization), so a stream's output does not depend on what
  it is batched with.
* ``auto`` (default): on CPU, ``weight-only`` for up to :data:`WEIGHT_ONLY_MAX_ROWS` rows (streaming at small
  batch), ``dynamic`` above; elsewhere ``weight-only`` in the model dtype. (On CPU, weights whose input width
  is not a multiple of :data:`INT8PACK_IN_MULTIPLE` always use ``dynamic``: see there.)

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

INT8_MAX = 127  # symmetric range [-127, 127]: -128 is never produced
WEIGHT_ONLY_MAX_ROWS = 4  # auto kernel on CPU: weight-only up to this many rows, dynamic above
# torch 2.13's CPU _weight_int8pack_mm crashes or miscomputes unless the input width is a multiple of this;
# narrower/odd weights (tiny test models, low-rank embeddings of 8) always use the dynamic kernel.
INT8PACK_IN_MULTIPLE = 16
SCALE_DTYPE = torch.bfloat16  # scales are rounded up to values of this dtype (exact in both kernels)
TINY_SCALE = 1e-12  # floor of a scale (all-zero rows / activations)
SKIPPED_PREFIXES = ("conditioning.",)  # float32 conditioners, run once per stream
ATTENTION_WEIGHTS = ("in_proj", "out_proj")  # stacked ``[W, out, in]`` projection parameters


class QuantMethod(str, Enum):
    """What ``--quantize`` accepts."""

    NONE = "none"
    INT8 = "int8"


class Int8Kernel(str, Enum):
    """How an :class:`Int8Weight` multiplies (see the module docstring)."""

    AUTO = "auto"
    DYNAMIC = "dynamic"
    WEIGHT_ONLY = "weight-only"

    def for_shape(self, rows: int, in_features: int, device: torch.device) -> Int8Kernel:
        """The kernel that runs for an input ``[rows, in_features]`` on ``device``."""
        if device.type == "cpu" and in_features % INT8PACK_IN_MULTIPLE:
            return Int8Kernel.DYNAMIC
        if self is not Int8Kernel.AUTO:
            return self
        if device.type != "cpu" or rows <= WEIGHT_ONLY_MAX_ROWS:
            return Int8Kernel.WEIGHT_ONLY
        return Int8Kernel.DYNAMIC


def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: ``[..., out, in]`` float -> (int8 ``[..., out, in]``, float32 scales
    ``[..., out]``) with ``weight ≈ q * scale[..., None]``; every scale is a bfloat16 value."""
    w = weight.detach().float()
    exact = (w.abs().amax(dim=-1) / INT8_MAX).clamp(min=TINY_SCALE)
    rounded = exact.to(SCALE_DTYPE)
    up = torch.nextafter(rounded, torch.full_like(rounded, float("inf")))
    scale = torch.where(rounded.float() < exact, up, rounded).float()
    q = torch.round(w / scale[..., None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.contiguous(), scale


def _dynamic_matmul(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    """``x`` ``[M, K]`` float (any), ``q`` ``[N, K]`` int8, ``scale`` ``[N]`` float32 -> ``[M, N]`` float32.
    Each row of ``x`` gets its own int8 scale."""
    x = x.float()
    x_scale = (x.abs().amax(dim=-1, keepdim=True) / INT8_MAX).clamp(min=TINY_SCALE)  # [M, 1]
    xq = torch.round(x / x_scale).to(torch.int8)
    return torch._int_mm(xq, q.t()) * (x_scale * scale)


def _activation_dtype(x: Tensor) -> torch.dtype:
    """bfloat16 for float32 inputs on CPU (see the module docstring), else the input dtype."""
    return torch.bfloat16 if x.device.type == "cpu" and x.dtype == torch.float32 else x.dtype


class Int8Weight:
    """A linear weight ``[..., out, in]`` held as int8 ``q`` plus float32 ``scale`` ``[..., out]``.

    Stands in for the float parameter it replaces: ``F.linear(x, w, b)`` dispatches here, integer/slice
    indexing of the leading dims and of the output dim works (``in_proj[k]``, ``in_proj[0, :dim]``), and
    ``dtype``/``device`` report the compute dtype (the replaced weight's) and device. Other operations raise.
    """

    def __init__(self, q: Tensor, scale: Tensor, dtype: torch.dtype, kernel: Int8Kernel):
        if q.dtype != torch.int8 or q.shape[:-1] != scale.shape:
            raise ValueError(f"int8 data {tuple(q.shape)} {q.dtype} does not match scales {tuple(scale.shape)}")
        self.q, self.scale, self.dtype, self.kernel = q, scale, dtype, kernel
        self._scales: dict[torch.dtype, Tensor] = {torch.float32: scale}  # scales cast once per dtype
        self._views: dict[str, Int8Weight] = {}  # indexed views (``in_proj[k]`` runs every step)

    @classmethod
    def from_float(cls, weight: Tensor, kernel: Int8Kernel = Int8Kernel.AUTO) -> Int8Weight:
        q, scale = quantize_rows(weight)
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
        return self.q.numel() * self.q.element_size() + self.scale.numel() * self.scale.element_size()

    def dequantize(self) -> Tensor:
        """The float weight it approximates, ``[..., out, in]`` in :attr:`dtype`."""
        return (self.q.float() * self.scale[..., None]).to(self.dtype)

    def __getitem__(self, index: Any) -> Int8Weight:
        parts = index if isinstance(index, tuple) else (index,)
        if len(parts) >= self.q.dim() or not all(isinstance(p, (int, slice)) for p in parts):
            raise IndexError(f"Int8Weight{tuple(self.shape)} can only be indexed by ints / slices over the "
                             f"leading and output dims, not {index!r}")
        key = repr(index)
        if key not in self._views:
            self._views[key] = Int8Weight(self.q[index], self.scale[index], self.dtype, self.kernel)
        return self._views[key]

    def _scale_as(self, dtype: torch.dtype) -> Tensor:
        if dtype not in self._scales:
            self._scales[dtype] = self.scale.to(dtype)
        return self._scales[dtype]

    def __repr__(self) -> str:
        return f"Int8Weight(shape={tuple(self.shape)}, dtype={self.dtype}, kernel={self.kernel.value})"

    def linear(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """``x`` ``[..., in]`` -> ``x @ W.T + bias`` ``[..., out]`` in ``x``'s dtype."""
        if self.q.dim() != 2:
            raise ValueError(f"F.linear needs a 2-D weight, this one is {tuple(self.shape)}: index it first")
        flat = x.reshape(-1, x.shape[-1])
        if self.kernel.for_shape(flat.shape[0], flat.shape[1], flat.device) is Int8Kernel.DYNAMIC:
            out = _dynamic_matmul(flat, self.q, self.scale).to(x.dtype)
        else:
            dtype = _activation_dtype(flat)
            out = torch._weight_int8pack_mm(flat.to(dtype).contiguous(), self.q, self._scale_as(dtype)).to(x.dtype)
        out = out.reshape(*x.shape[:-1], out.shape[-1])
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
    """What :func:`quantize_lm` did: ``tensors`` weights replaced holding ``params`` values; bytes before/after."""

    method: QuantMethod
    kernel: Int8Kernel
    tensors: int
    params: int
    bytes_before: int
    bytes_after: int


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
                kernel: Int8Kernel | str = Int8Kernel.AUTO) -> QuantizeReport:
    """Quantize ``lm``'s linear weights in place (see the module docstring). ``method="none"`` does nothing.

    Call it after the model is on its device. Each float weight is dropped as soon as its int8 copy exists, so
    the peak memory is the float model plus one weight.
    """
    method, kernel = QuantMethod(method), Int8Kernel(kernel)
    tensors = params = before = after = 0
    if method is QuantMethod.NONE:
        return QuantizeReport(method, kernel, 0, 0, 0, 0)
    for _name, module, attribute in list(_linear_weights(lm)):
        weight = module._parameters.pop(attribute)
        assert weight is not None
        quantized = Int8Weight.from_float(weight, kernel)
        setattr(module, attribute, quantized)
        tensors, params = tensors + 1, params + weight.numel()
        before, after = before + weight.numel() * weight.element_size(), after + quantized.nbytes
        del weight
    return QuantizeReport(method, kernel, tensors, params, before, after)


def is_quantized(lm: nn.Module) -> bool:
    """True when some weight of ``lm`` is an :class:`Int8Weight`."""
    return any(isinstance(value, Int8Weight) for module in lm.modules() for value in vars(module).values())
