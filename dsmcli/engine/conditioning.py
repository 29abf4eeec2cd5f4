"""Conditioning of the TTS models: conditioners and the fuser (FORMAT.md §3.6), always computed in float32.

The caller describes the condition of each batch slot with :class:`ConditionInputs`: a value (or None = no
condition, i.e. the learnt padding) per LUT conditioner, and a ``[B, S, dim]`` tensor with a ``[B, S]`` mask per
tensor conditioner. :meth:`ConditionProvider.encode` turns them into :class:`ConditionTensors`: the ``sum``
condition ``[B, 1, D]`` added to every step's input and the ``cross`` source ``[B, S, D]`` of cross-attention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsmcli.engine.config import ConditionerConfig, ConditionerKind, FuserConfig
from dsmcli.nn.sinusoid import sin_embedding


@dataclass(frozen=True)
class TensorCondition:
    """``tensor`` ``[B, S, dim]`` float, ``mask`` ``[B, S]`` bool (False = padding)."""

    tensor: Tensor
    mask: Tensor

    @classmethod
    def full(cls, tensor: Tensor) -> TensorCondition:
        """All positions valid."""
        return cls(tensor, torch.ones(tensor.shape[:2], dtype=torch.bool, device=tensor.device))

    def null(self) -> TensorCondition:
        """Zeros with an all-False mask (every position becomes the learnt padding)."""
        return TensorCondition(torch.zeros_like(self.tensor), torch.zeros_like(self.mask))


@dataclass(frozen=True)
class ConditionInputs:
    """Conditions of a batch: ``values[name]`` has one entry per slot (None = unconditioned), and
    ``tensors[name]`` is a batched :class:`TensorCondition`."""

    values: Mapping[str, Sequence[str | None]] = field(default_factory=dict)
    tensors: Mapping[str, TensorCondition] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        sizes = {len(v) for v in self.values.values()} | {t.tensor.shape[0] for t in self.tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"condition batch sizes disagree: {sorted(sizes)}")
        return sizes.pop()

    def null(self) -> ConditionInputs:
        """The same batch with every condition dropped (the unconditional half of real CFG)."""
        return ConditionInputs({k: [None] * len(v) for k, v in self.values.items()},
                               {k: t.null() for k, t in self.tensors.items()})

    @staticmethod
    def concat(parts: Sequence[ConditionInputs]) -> ConditionInputs:
        """Stack batches along the batch dim; tensor conditions are zero-padded to the longest ``S``."""
        values = {k: [v for p in parts for v in p.values[k]] for k in parts[0].values}
        tensors = {k: _cat_tensor_conditions([p.tensors[k] for p in parts]) for k in parts[0].tensors}
        return ConditionInputs(values, tensors)


def _cat_tensor_conditions(parts: Sequence[TensorCondition]) -> TensorCondition:
    length = max(p.tensor.shape[1] for p in parts)
    tensor = torch.cat([F.pad(p.tensor, (0, 0, 0, length - p.tensor.shape[1])) for p in parts])
    mask = torch.cat([F.pad(p.mask, (0, length - p.mask.shape[1])) for p in parts])
    return TensorCondition(tensor, mask)


@dataclass(frozen=True)
class ConditionTensors:
    """What the LM consumes: ``sum`` ``[B, 1, D]`` and ``cross`` ``[B, S, D]`` (each None if the fuser has none)."""

    sum: Tensor | None
    cross: Tensor | None


class Conditioner(nn.Module):
    """``output_proj`` (``[D, dim]``, optional) then padding: ``proj(x)`` where the mask is set, else
    ``learnt_padding`` ``[1, 1, D]`` (zeros if not learnt)."""

    def __init__(self, config: ConditionerConfig, lm_dim: int, device: torch.device | str | None = None):
        super().__init__()
        self.config = config
        if config.kind is ConditionerKind.LUT:
            self.embed = nn.Embedding(config.n_bins + 1, config.dim, device=device)
        self.output_proj = nn.Linear(config.dim, lm_dim, bias=False, device=device) if config.projection else None
        self.learnt_padding = (nn.Parameter(torch.zeros(1, 1, lm_dim, device=device))
                               if config.learn_padding else None)

    @property
    def device(self) -> torch.device:
        return next(iter(self.parameters()), torch.zeros(())).device

    def index_of(self, value: str | None) -> int:
        """LUT row of ``value``; None is the padding row ``n_bins``."""
        if value is None:
            return self.config.n_bins
        try:
            return self.config.possible_values.index(value)
        except ValueError:
            allowed = ", ".join(self.config.possible_values)
            raise ValueError(f"condition {self.config.name}: {value!r} is not one of {allowed}") from None

    def lookup(self, values: Sequence[str | None]) -> tuple[Tensor, Tensor]:
        """LUT input: ``values`` -> (``[B, 1, dim]`` rows, ``[B, 1]`` mask)."""
        device = self.embed.weight.device
        rows = torch.tensor([self.index_of(v) for v in values], dtype=torch.long, device=device)
        mask = torch.tensor([v is not None for v in values], dtype=torch.bool, device=device)
        return self.embed(rows[:, None]), mask[:, None]

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` ``[B, S, dim]``, ``mask`` ``[B, S]`` -> ``[B, S, D]`` float32."""
        y = x.float() if self.output_proj is None else self.output_proj(x.float())
        keep = mask.float()[..., None]
        padding = self.learnt_padding if self.learnt_padding is not None else torch.zeros_like(y[:1, :1])
        return y * keep + padding * (1 - keep)


class ConditionProvider(nn.Module):
    """All conditioners of a model (``conditioners.{name}``) and the fuser that combines them."""

    def __init__(self, conditioners: Sequence[ConditionerConfig], fuser: FuserConfig | None, lm_dim: int,
                 device: torch.device | str | None = None):
        super().__init__()
        self.fuser = fuser
        self.conditioners = nn.ModuleDict({c.name: Conditioner(c, lm_dim, device) for c in conditioners})

    def _condition(self, name: str, inputs: ConditionInputs) -> Tensor:
        conditioner = cast(Conditioner, self.conditioners[name])
        if conditioner.config.kind is ConditionerKind.LUT:
            if name not in inputs.values:
                raise ValueError(f"missing value for condition {name!r}")
            return conditioner(*conditioner.lookup(inputs.values[name]))
        if name not in inputs.tensors:
            raise ValueError(f"missing tensor for condition {name!r}")
        given = inputs.tensors[name]
        return conditioner(given.tensor.to(conditioner.device), given.mask.to(conditioner.device))

    def encode(self, inputs: ConditionInputs) -> ConditionTensors:
        """Fuse the conditions of a batch: sum conditions in fuser order, cross conditions concatenated in time
        (plus the sinusoidal position embedding if the fuser asks for it). Float32."""
        if self.fuser is None:
            return ConditionTensors(None, None)
        unknown = (set(inputs.values) | set(inputs.tensors)) - set(self.conditioners)
        if unknown:
            raise ValueError(f"unknown conditions {sorted(unknown)} (model has {sorted(self.conditioners)})")
        total = None
        for name in self.fuser.sum:
            cond = self._condition(name, inputs)
            total = cond if total is None else total + cond
        cross = None
        for name in self.fuser.cross:
            cond = self._condition(name, inputs)
            cross = cond if cross is None else torch.cat([cross, cond], dim=1)
        if cross is not None and self.fuser.cross_pos_emb:
            positions = torch.arange(cross.shape[1], device=cross.device)
            cross = cross + self.fuser.cross_pos_emb_scale * sin_embedding(positions, cross.shape[-1])[None]
        return ConditionTensors(total, cross)
