"""How the step engine runs: :class:`EngineOptions` (what it samples is :class:`~dsmcli.engine.SamplingOptions`;
the dtype is the model's, chosen at load: ``load_lm(..., dtype=torch.bfloat16)``).

* ``static_shapes``: every step attends over the whole KV ring, from a stream's first step on. By default a
  stream's first ``context`` steps attend only over the ring cells written so far (a prefix; the rest is empty),
  which is cheaper — at batch 16 the backbone reads ~3 GB of keys/values per step once the float32 ring is full —
  but gives each step its own shapes. Static shapes are what ``torch.compile`` needs (no recompiles) and CUDA
  graphs need, and they reproduce the reference's attention exactly (it always attends over its whole ring);
  the prefix changes the softmax's summation order only (float32: ~1e-6 relative on the logits; bfloat16: a
  few units in the last place).
* ``compile``: the model part of a step (embeddings, backbone, text head, extra heads:
  :meth:`~dsmcli.engine.LM.step`) goes through ``torch.compile(dynamic=False, mode=compile_mode)``; implies
  static shapes, so a stream compiles once (the KV rings are per-layer tensors updated in place, not copied).
  The depformer and the sampling stay eager. Meant for GPUs (``compile_mode="reduce-overhead"`` adds CUDA graphs;
  untested here, no GPU). On CPU it is correct (tests/test_engine_fast_paths.py) but not faster at real size:
  stt-1b layout, float32, batch 1, one thread: 473 ms/step compiled vs 348 ms eager, after 83 s of compiling;
  at width 128 with the same depth, where the many small ops dominate, it halves the step (5.5 vs 11.5 ms).
* ``kernels``: the :class:`~dsmcli.kernels.KernelChoice` of the stream's native CPU kernels, decided when a stream
  is made (:meth:`~dsmcli.engine.LMStream.init_state`): the depformer's sub-steps (``depformer_step.cpp``) and, for
  a quantized model on CPU, the attention over float16 KV rings (:meth:`~dsmcli.engine.LM.attention_kernels`).
  ``auto`` (default) uses them where they build, ``native`` makes one that cannot be built an error
  (:class:`~dsmcli.kernels.KernelUnavailable`), ``torch`` uses none. On a float model only the depformer's
  kernel depends on it (its results match the torch path to float rounding; the backbone always attends with SDPA).
  The quantized weights' own linears follow the choice given when they were quantized (``load_lm(..., kernels=)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from dsmcli.kernels import KernelChoice

F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class EngineOptions:
    """Execution choices of :class:`~dsmcli.engine.LMStream` (see the module docstring)."""

    static_shapes: bool = False
    compile: bool = False
    compile_mode: str | None = None
    kernels: KernelChoice = KernelChoice.AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernels", KernelChoice(self.kernels))
        if self.compile_mode is not None and not self.compile:
            raise ValueError("compile_mode is only used with compile=True")

    @property
    def uses_static_shapes(self) -> bool:
        return self.static_shapes or self.compile

    def wrap(self, fn: F) -> F:
        """``fn`` compiled with these options (as is without ``compile``)."""
        if not self.compile:
            return fn
        return torch.compile(fn, dynamic=False, mode=self.compile_mode)  # type: ignore[return-value]
