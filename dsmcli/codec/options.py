"""How Mimi runs: :class:`CodecOptions`, given to :class:`~dsmcli.codec.model.Mimi` when it is built
(``Mimi(config, num_codebooks, options)``, ``Mimi.from_state(..., options=)``, ``load_mimi(..., options=)``).

* ``kernels``: the :class:`~dsmcli.kernels.KernelChoice` of Mimi's native streaming kernels (SEANet steps, the
  transformer step, the float32 products, the residual quantizer; :mod:`dsmcli.kernels.codec`): ``auto`` (default)
  uses them where they build, ``native`` makes one that cannot be built an error, ``torch`` uses none.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsmcli.kernels import KernelChoice


@dataclass(frozen=True)
class CodecOptions:
    """Execution choices of a :class:`~dsmcli.codec.model.Mimi` (see the module docstring)."""

    kernels: KernelChoice = KernelChoice.AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernels", KernelChoice(self.kernels))
