"""Split residual vector quantizer (FORMAT.md §2.7).

``rvq_first`` (semantic) and ``rvq_rest`` (acoustic) both quantize the same unquantized latent,
each through its own 1×1 input projection; ``rvq_rest`` is residual over its levels. Decoding sums
both output projections. Centroids are ``embedding_sum / max(cluster_usage, eps)``; they are
derived tables, rebuilt whenever a state dict is loaded (or by :meth:`ResidualVQ.refresh`).

Distances use the augmented-matmul form ``[-2x, |x|², 1] · [e, 1, |e|²]`` (then clamp ≥ 0, sqrt)
that ``torch.cdist`` uses for large codebooks; the augmented table is precomputed once. Many rows (one-shot
encoding), small tables and machines without the native kernels go through the same BLAS product as
``torch.cdist``, bit for bit; a streaming step's few rows against a released-size table go through
:func:`dsmcli.codec.kernels.rvq_encode` (all levels in one native call, the table streamed at memory speed by
the product of :func:`dsmcli.codec.kernels.linear`), whose distances differ from cdist's by float rounding:
codes can then differ only where two centroids are within that rounding of each other (see
tests/test_codec_kernels.py). That kernel first reads an int8 copy of the table
(:func:`~dsmcli.codec.kernels.screen_tables`, built on first use: 17 MB for a released Mimi's 32 levels) and
computes exact float32 distances only for the centroids within a rigorous rounding bound of the best: the same
codes, bit for bit, from a quarter of the memory traffic.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dsmcli.codec.config import QuantizerConfig
from dsmcli.codec.kernels import native_linear, rvq_encode, screen_tables
from dsmcli.kernels import KernelChoice


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

    augmented_table: Tensor  # [levels, bins, dim + 2]: rows [e, 1, |e|^2]

    def __init__(self, config: QuantizerConfig, num_levels: int):
        super().__init__()
        self.bins = config.bins
        self.epsilon = config.epsilon
        self.input_proj = nn.Conv1d(config.input_dimension, config.dimension, 1, bias=False)
        self.output_proj = nn.Conv1d(config.dimension, config.output_dimension, 1, bias=False)
        self.vq = _Levels(num_levels, config.bins, config.dimension)
        self.dimension = config.dimension
        self.kernels = KernelChoice.AUTO  # Mimi's CodecOptions.kernels (set when Mimi is built)
        self.register_buffer("augmented_table", torch.zeros(num_levels, config.bins, config.dimension + 2),
                             persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _incompatible: module.refresh())
        self.refresh()

    @property
    def num_levels(self) -> int:
        return len(self.vq.layers)

    @torch.no_grad()
    def refresh(self) -> None:
        """Rebuild the centroid tables from the codebook buffers (call after editing them in place). The table is
        written level by level, the old one dropped first: no stacked copy of the codebooks exists next to it
        (Mimi's 32 levels: 65 MB a copy, the peak of a model load)."""
        books = [level._codebook for level in self.vq.layers]
        if any(book.embedding_sum is None for book in books):
            raise RuntimeError("this quantizer freed its codebook sums (decode-only Mimi): reload it to refresh")
        first, dim = books[0].embedding_sum, self.dimension
        self.augmented_table = None  # type: ignore[assignment]
        self._screen = None
        table = torch.empty(len(books), self.bins, dim + 2, dtype=first.dtype, device=first.device)
        for level, book in enumerate(books):
            centroids = book.centroids(self.epsilon)
            table[level, :, :dim] = centroids
            table[level, :, dim] = 1.0
            table[level, :, dim + 1] = centroids.pow(2).sum(-1)
        self.augmented_table = table

    def free_codebook_sums(self) -> None:
        """Drop the codebook buffers' ``embedding_sum`` (decode-only use): the centroids are in the augmented table
        already, which is all that decoding reads; :meth:`refresh` then raises."""
        for level in self.vq.layers:
            level._codebook.embedding_sum = None  # type: ignore[assignment]

    def _screen_tables(self) -> tuple[Tensor, ...]:
        """The int8 screen of the augmented table (:func:`~dsmcli.codec.kernels.screen_tables`), built on first
        use by a native streaming step."""
        if self._screen is None or self._screen[0].device != self.augmented_table.device:
            self._screen = screen_tables(self.augmented_table)
        return self._screen

    def centroids(self, level: int) -> Tensor:
        """``[bins, dim]`` centroids of one level (a view into the augmented table)."""
        return self.augmented_table[level, :, : self.dimension]

    def encode(self, latent: Tensor, num_levels: int) -> Tensor:
        """``[B, C, T]`` → codes ``[B, num_levels, T]`` (int64), nearest centroid level by level.

        Each level writes the augmented rows ``[-2x, |x|², 1]`` ``[N, dim + 2]`` into one preallocated
        buffer, multiplies them by the level's augmented table and takes the argmin of the clamped
        square roots (ties: lowest index): the reference's ``torch.cdist`` arithmetic, bit for bit, unless
        :func:`~dsmcli.codec.kernels.rvq_encode` takes the step (see the module docstring).
        """
        batch, _, steps = latent.shape
        projected = native_linear(latent.transpose(1, 2), self.input_proj.weight[:, :, 0], None, self.kernels)
        if projected is None:  # the reference's 1x1 conv, bit for bit
            projected = self.input_proj(latent).transpose(1, 2)
        residual = projected.reshape(batch * steps, -1)  # [N, dim]
        fused = rvq_encode(residual, self.augmented_table[:num_levels], self.kernels, self._screen_tables)
        if fused is not None:
            return fused.view(num_levels, batch, steps).transpose(0, 1)
        dim = self.dimension
        augmented = residual.new_ones(residual.shape[0], dim + 2)
        distances = residual.new_empty(residual.shape[0], self.bins)
        codes = residual.new_empty(num_levels, residual.shape[0], dtype=torch.long)
        for level in range(num_levels):
            torch.mul(residual, -2.0, out=augmented[:, :dim])
            augmented[:, dim] = residual.pow(2).sum(-1)
            table = self.augmented_table[level]
            torch.mm(augmented, table.t(), out=distances)
            torch.argmin(distances.clamp_min_(0.0).sqrt_(), dim=-1, out=codes[level])
            if level + 1 < num_levels:
                residual = residual - table[:, :dim].index_select(0, codes[level])
        return codes.view(num_levels, batch, steps).transpose(0, 1)

    def decode(self, codes: Tensor) -> Tensor:
        """codes ``[B, K, T]`` (K ≤ levels, each in ``[0, bins)``) → ``[B, C, T]``."""
        levels = codes.shape[1]
        offsets = torch.arange(levels, device=codes.device)[None, :, None] * self.bins
        flat_table = self.augmented_table[:levels].flatten(0, 1)  # [K * bins, dim + 2]
        rows = flat_table.index_select(0, (codes + offsets).flatten())[:, : self.dimension]
        quantized = rows.view(*codes.shape, -1).sum(dim=1)  # [B, T, dim]
        return self.output_proj(quantized.transpose(1, 2))


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
