"""Split residual vector quantizer (FORMAT.md §2.7).

``rvq_first`` (semantic) and ``rvq_rest`` (acoustic) both quantize the same unquantized latent,
each through its own 1×1 input projection; ``rvq_rest`` is residual over its levels. Decoding sums
both output projections. Centroids are ``embedding_sum / max(cluster_usage, eps)``; they are
derived tables, rebuilt whenever a state dict is loaded (or by :meth:`ResidualVQ.refresh`).

The nearest centroid minimises ``|e|²/2 - x·e`` (the squared distance less ``|x|²``, halved): one
``addmm`` against the precomputed centroid table and half squared norms per level, then argmin
(ties: lowest index, as the reference). The reference ranks ``sqrt(max(|x|² - 2x·e + |e|², 0))``
(``torch.cdist``); both orders agree except where two distances are within float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsmcli.codec.config import QuantizerConfig

TALL_SCORES_FROM = 8  # rows from which scores are computed as ``table @ residualᵀ`` (faster BLAS path)
ROW_BLOCK = 4096  # one-shot encoding quantizes this many rows at a time (bounds the score matrix)


class Codebook(nn.Module):
    """The released codebook buffers: ``embedding_sum`` ``[bins, dim]``, ``cluster_usage`` ``[bins]``,
    ``_initialized`` ``[1]`` (kept for the file layout)."""

    def __init__(self, bins: int, dim: int):
        super().__init__()
        self.register_buffer("_initialized", torch.ones(1))
        self.register_buffer("cluster_usage", torch.ones(bins))
        self.register_buffer("embedding_sum", torch.zeros(bins, dim))

    def centroids(self, epsilon: float) -> Tensor:
        return self.embedding_sum / self.cluster_usage.clamp(min=epsilon)[:, None]


class _Level(nn.Module):
    def __init__(self, bins: int, dim: int):
        super().__init__()
        self._codebook = Codebook(bins, dim)


class _Levels(nn.Module):
    """``vq.layers.{i}._codebook`` in the released names."""

    def __init__(self, num_levels: int, bins: int, dim: int):
        super().__init__()
        self.layers = nn.ModuleList(_Level(bins, dim) for _ in range(num_levels))


class ResidualVQ(nn.Module):
    """Residual VQ over ``num_levels`` codebooks with 1×1 conv projections in and out."""

    table: Tensor  # [levels, bins, dim] centroids
    half_norms: Tensor  # [levels, bins] |e|^2 / 2

    def __init__(self, config: QuantizerConfig, num_levels: int):
        super().__init__()
        self.bins = config.bins
        self.epsilon = config.epsilon
        self.input_proj = nn.Conv1d(config.input_dimension, config.dimension, 1, bias=False)
        self.output_proj = nn.Conv1d(config.dimension, config.output_dimension, 1, bias=False)
        self.vq = _Levels(num_levels, config.bins, config.dimension)
        self.dimension = config.dimension
        self.register_buffer("table", torch.zeros(num_levels, config.bins, config.dimension), persistent=False)
        self.register_buffer("half_norms", torch.zeros(num_levels, config.bins), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _incompatible: module.refresh())
        self.refresh()

    @property
    def num_levels(self) -> int:
        return len(self.vq.layers)

    @torch.no_grad()
    def refresh(self) -> None:
        """Rebuild the centroid tables from the codebook buffers (call after editing them in place)."""
        self.table = torch.stack([level._codebook.centroids(self.epsilon) for level in self.vq.layers])
        self.half_norms = self.table.pow(2).sum(-1).mul_(0.5)

    def centroids(self, level: int) -> Tensor:
        """``[bins, dim]`` centroids of one level."""
        return self.table[level]

    def _nearest(self, residual: Tensor, centroids: Tensor, half_norms: Tensor) -> Tensor:
        """Index ``[N]`` of the nearest of ``centroids`` ``[bins, dim]`` (half squared norms ``[bins]``) for
        each row of ``residual`` ``[N, dim]`` (ties: lowest index)."""
        if residual.shape[0] < TALL_SCORES_FROM:  # [N, bins]: the fast matrix-vector path for a few rows
            return torch.addmm(half_norms, residual, centroids.t(), alpha=-1).argmin(dim=1)
        return torch.addmm(half_norms[:, None], centroids, residual.t(), alpha=-1).argmin(dim=0)  # [bins, N]

    def project_in(self, latent: Tensor) -> Tensor:
        """``[B, C, T]`` → rows ``[B * T, dim]`` to quantize."""
        weight = self.input_proj.weight
        return F.linear(latent.transpose(1, 2), weight.view(weight.shape[0], -1)).flatten(0, 1)

    def encode(self, latent: Tensor, num_levels: int) -> Tensor:
        """``[B, C, T]`` → codes ``[B, num_levels, T]`` (int64), nearest centroid level by level."""
        batch, _, steps = latent.shape
        levels = list(zip(self.table[:num_levels].unbind(0), self.half_norms[:num_levels].unbind(0)))
        blocks = []
        for rows in self.project_in(latent).split(ROW_BLOCK):
            residual, codes = rows.clone(), []
            for centroids, half_norms in levels:
                codes.append(self._nearest(residual, centroids, half_norms))
                if len(codes) < num_levels:
                    residual.sub_(centroids.index_select(0, codes[-1]))
            blocks.append(torch.stack(codes, dim=1))  # [N, num_levels]
        codes = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
        return codes.view(batch, steps, num_levels).transpose(1, 2)

    def decode(self, codes: Tensor) -> Tensor:
        """codes ``[B, K, T]`` (K ≤ levels, each in ``[0, bins)``) → ``[B, C, T]``."""
        levels = codes.shape[1]
        offsets = torch.arange(levels, device=codes.device)[None, :, None] * self.bins
        rows = self.table[:levels].flatten(0, 1).index_select(0, (codes + offsets).flatten())  # [B*K*T, dim]
        quantized = rows.view(*codes.shape, -1).sum(dim=1)  # [B, T, dim]
        weight = self.output_proj.weight
        return F.linear(quantized, weight.view(weight.shape[0], -1)).transpose(1, 2)


class SplitQuantizer(nn.Module):
    """``rvq_first`` (``n_q_semantic`` levels) + ``rvq_rest`` (the other ``n_q - n_q_semantic``)."""

    def __init__(self, config: QuantizerConfig):
        super().__init__()
        self.n_q_semantic = config.n_q_semantic
        self.total_codebooks = config.n_q
        self.rvq_first = ResidualVQ(config, config.n_q_semantic)
        self.rvq_rest = ResidualVQ(config, config.n_q - config.n_q_semantic)

    def encode(self, latent: Tensor, num_codebooks: int) -> Tensor:
        """Unquantized latent ``[B, C, T]`` → codes ``[B, num_codebooks, T]`` (semantic first)."""
        codes = self.rvq_first.encode(latent, min(num_codebooks, self.n_q_semantic))
        if num_codebooks <= self.n_q_semantic:
            return codes
        rest = self.rvq_rest.encode(latent, num_codebooks - self.n_q_semantic)
        return torch.cat([codes, rest], dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        """codes ``[B, K, T]``, any ``1 <= K <= total_codebooks`` → latent ``[B, C, T]``."""
        latent = self.rvq_first.decode(codes[:, : self.n_q_semantic])
        if codes.shape[1] > self.n_q_semantic:
            latent = latent + self.rvq_rest.decode(codes[:, self.n_q_semantic:])
        return latent
