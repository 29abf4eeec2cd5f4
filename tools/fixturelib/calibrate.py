"""Calibrate a random STT text head so greedy decoding on real speech codes emits a healthy mix
of PAD, end-of-padding (word boundary) and word tokens.

Scaling the PAD/EPAD rows alone does not do it: the backbone output ``h_t`` has a large, nearly
constant mean component, so a random row's logit is mostly a fixed offset. We therefore rewrite
the two rows as ``w_r = a_r * g_r + b_r * m``, with ``m`` the unit mean direction of ``h_t`` (so
``b_r`` acts as a bias) and ``g_r`` the original random row minus its ``m`` component (so ``a_r``
sets how much the logit follows the audio). The factors are found by bisection against win rates
measured on greedy runs, repeated a few times because the emitted tokens feed back.
"""

from __future__ import annotations

import torch
from torch import nn

TARGET_PAD_RATE = 0.55  # fraction of steps where PAD wins
TARGET_EPAD_RATE = 0.15  # fraction of steps where end-of-padding wins
SPREAD = 1.5  # std of a calibrated row's audio-dependent logit, relative to the best other logit's std
ROUNDS = 3
BISECTION_STEPS = 40


def greedy_features(lm: nn.Module, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy reference decoding of ``codes`` ``[B, n_q, T]``: (backbone outputs ``[B*T, D]``, tokens ``[B, T]``)."""
    from moshi.models import LMGen

    gen = LMGen(lm, temp=0, temp_text=0)
    feats, tokens = [], []
    with torch.no_grad(), gen.streaming(codes.shape[0]):
        for step in range(codes.shape[-1]):
            out, transformer_out = gen._step(codes[:, :, step : step + 1])
            feats.append(transformer_out[:, 0])
            tokens.append(out[:, 0, 0])
    return torch.stack(feats, dim=1).flatten(0, 1), torch.stack(tokens, dim=1)


def _bias_for_rate(logit: torch.Tensor, direction: torch.Tensor, rival: torch.Tensor, rate: float) -> float:
    """``b`` such that ``logit + b * direction > rival`` on a fraction ``rate`` of the rows (bisection)."""
    low, high = -1e3, 1e3
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        wins = (logit + mid * direction > rival).float().mean().item()
        low, high = (mid, high) if wins < rate else (low, mid)
    return (low + high) / 2


def _fit_row(
    weight: torch.Tensor, row: int, base: torch.Tensor, feats: torch.Tensor, rival: torch.Tensor, rate: float
) -> None:
    """Set ``weight[row]`` so that its logit beats ``rival`` ``[N]`` on a fraction ``rate`` of ``feats`` ``[N, D]``."""
    mean = feats.mean(dim=0)
    unit = mean / mean.norm()
    g = base - (base @ unit) * unit
    g = g * (SPREAD * rival.std() / (feats @ g).std())
    bias = _bias_for_rate(feats @ g, feats @ unit, rival, rate)
    weight[row] = g + bias * unit


def _fit_rows(weight: torch.Tensor, feats: torch.Tensor, pad: int, epad: int, base: dict[int, torch.Tensor]) -> None:
    """Set rows ``pad`` and ``epad`` of ``weight`` ``[V, D]`` from the backbone outputs ``[N, D]``."""
    others = torch.ones(weight.shape[0], dtype=torch.bool)
    others[[pad, epad]] = False
    best_other = (feats @ weight[others].T).max(dim=1).values  # [N]
    _fit_row(weight, pad, base[pad], feats, best_other, TARGET_PAD_RATE)
    # EPAD must beat PAD too: its wins come out of the steps PAD would otherwise take or lose.
    _fit_row(weight, epad, base[epad], feats, torch.maximum(best_other, feats @ weight[pad]), TARGET_EPAD_RATE)


def calibrate_text_head(lm: nn.Module, codes: torch.Tensor) -> dict[str, float]:
    """Rewrite the PAD and end-of-padding rows of ``lm.text_linear`` in place; returns the final mix."""
    pad, epad = lm.text_padding_token_id, lm.end_of_text_padding_id
    weight = lm.text_linear.weight
    base = {row: weight[row].detach().clone() for row in (pad, epad)}
    with torch.no_grad():
        for _ in range(ROUNDS):
            feats, _ = greedy_features(lm, codes)
            _fit_rows(weight, feats, pad, epad, base)
        _, tokens = greedy_features(lm, codes)
    total = tokens.numel()
    return {
        "pad": (tokens == pad).sum().item() / total,
        "end_pad": (tokens == epad).sum().item() / total,
        "word": (tokens > max(pad, epad)).sum().item() / total,
    }
