"""Token sampling and classifier-free guidance (FORMAT.md §4).

``sample_token`` is greedy (``argmax``, first maximum wins) at temperature 0; otherwise it samples from
``softmax(logits / temp)`` restricted to the ``top_k`` most likely tokens (all if 0), drawing with the
exponential race ``argmax(p / q)``, ``q ~ Exp(1)``: one random draw per candidate, no host sync. With the same
RNG state it draws exactly what the reference draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

NO_GUIDANCE = 1.0  # cfg_coef value that disables classifier-free guidance


@dataclass(frozen=True)
class SamplingOptions:
    """Per-run sampling choices (not model config). ``cfg_coef`` != 1 enables real CFG by batch doubling."""

    temp: float = 0.8  # audio temperature (0 = greedy)
    top_k: int = 250  # audio top-k (0 = no restriction)
    text_temp: float = 0.7
    text_top_k: int = 25
    cfg_coef: float = NO_GUIDANCE

    def __post_init__(self) -> None:
        for name in ("temp", "text_temp"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        for name in ("top_k", "text_top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not (math.isfinite(self.cfg_coef) and self.cfg_coef > 0):
            raise ValueError(f"cfg_coef must be a finite number > 0, got {self.cfg_coef}")

    @classmethod
    def greedy(cls) -> SamplingOptions:
        """Argmax for text and audio, no guidance."""
        return cls(temp=0.0, text_temp=0.0)

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_coef != NO_GUIDANCE


def sample_token(logits: Tensor, temp: float, top_k: int = 0, generator: torch.Generator | None = None) -> Tensor:
    """``logits`` ``[..., V]`` -> token ids ``[...]`` (long). See the module docstring."""
    if temp <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temp, dim=-1)
    if top_k > 0:
        probs, candidates = torch.topk(probs, min(top_k, probs.shape[-1]), dim=-1)
        return candidates.gather(-1, _exponential_race(probs, generator)[..., None])[..., 0]
    return _exponential_race(probs, generator)


def _exponential_race(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One multinomial draw per row of ``probs`` ``[..., V]`` -> ``[...]``."""
    flat = probs.reshape(-1, probs.shape[-1])
    race = flat / torch.empty_like(flat).exponential_(1, generator=generator)
    return race.argmax(dim=-1).reshape(probs.shape[:-1])


def cfg_mix(conditional: Tensor, unconditional: Tensor, coef: float) -> Tensor:
    """Guided logits ``null + coef * (cond - null)``."""
    return unconditional + (conditional - unconditional) * coef
