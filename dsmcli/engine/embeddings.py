"""Token embeddings of the DSM streams (FORMAT.md §3.2, §3.5).

* The zero token (-1) embeds to an exact zero vector; other ids are looked up (clamped at 0).
* ``low_rank``: the table has width ``r`` and a bias-free ``low_rank`` linear maps it to ``dim``.
* ``demux``: a text value ``v = (second + 1) * V + main`` (``V`` = table rows) carries two streams; the
  embedding is ``out1(E[main]) + out2(E[second])`` (the second term is 0 when ``second < 0``). On this
  path ``out1``/``out2`` read the table rows directly: a ``low_rank`` linear, if present, is not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsmcli.engine.config import ZERO_TOKEN_ID


class TokenEmbedding(nn.Module):
    """``tokens`` ``[...]`` (long) -> ``[..., dim]``. Weights: ``weight`` ``[V, r or dim]``, optional
    ``low_rank.weight`` ``[dim, r]``, ``out1.weight``/``out2.weight`` ``[dim, r or dim]`` when demuxing."""

    def __init__(self, num_embeddings: int, dim: int, low_rank: int | None = None, demux: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        width = low_rank or dim
        self.demux = demux
        self.weight = nn.Parameter(torch.empty(num_embeddings, width, device=device, dtype=dtype))
        self.low_rank = None if low_rank is None else nn.Linear(low_rank, dim, bias=False, device=device, dtype=dtype)
        if demux:
            self.out1 = nn.Linear(width, dim, bias=False, device=device, dtype=dtype)
            self.out2 = nn.Linear(width, dim, bias=False, device=device, dtype=dtype)

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    def forward(self, tokens: Tensor) -> Tensor:
        is_zero = (tokens == ZERO_TOKEN_ID)[..., None]
        zero = torch.zeros((), dtype=self.weight.dtype, device=self.weight.device)
        ids = tokens.clamp(min=0)
        if self.demux:
            main = F.embedding(ids % self.num_embeddings, self.weight)
            second = ids // self.num_embeddings - 1
            second_vec = self.out2(F.embedding(second.clamp(min=0), self.weight))
            y = self.out1(main) + torch.where((second < 0)[..., None], zero, second_vec)
            return torch.where(is_zero, zero, y)
        y = torch.where(is_zero, zero, F.embedding(ids, self.weight))
        return y if self.low_rank is None else self.low_rank(y)
