"""A preallocated ring key/value cache holding the last ``capacity`` steps of each batch slot.

Every slot has its own write position (``end``) and remembers the absolute position of what each
ring cell holds (``positions``, -1 for a cell never written since the last reset), so attention
masks are built from positions alone (see :func:`dsmcli.nn.attention.context_mask`) and slots can
start, pause (``active``) and reset independently. No host synchronisation happens here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

EMPTY_POSITION = -1


@dataclass
class RingKVCache:
    """Streaming state of one attention layer.

    keys, values: ``[B, H, C, D]``; positions: ``[B, C]`` absolute position per cell (-1 = empty);
    end: ``[B]`` next absolute position of each slot.
    """

    keys: Tensor
    values: Tensor
    positions: Tensor
    end: Tensor

    @classmethod
    def create(
        cls,
        batch_size: int,
        num_heads: int,
        capacity: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> RingKVCache:
        if capacity <= 0:
            raise ValueError(f"KV cache capacity must be positive, got {capacity}")
        shape = (batch_size, num_heads, capacity, head_dim)
        return cls(
            keys=torch.zeros(shape, device=device, dtype=dtype),
            values=torch.zeros(shape, device=device, dtype=dtype),
            positions=torch.full((batch_size, capacity), EMPTY_POSITION, device=device, dtype=torch.long),
            end=torch.zeros(batch_size, device=device, dtype=torch.long),
        )

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def append(self, k: Tensor, v: Tensor, active: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Write ``k``, ``v`` ``[B, H, T, D]`` at ring cells ``(end + j) % C`` with positions ``end + j``.

        Only slots where ``active`` ``[B]`` is True (all if None) are written and advanced; the others
        keep their state untouched. Returns ``(keys [B,H,C,D], values [B,H,C,D], positions [B,C])``
        to attend over (the cache's own buffers: read them before the next append).
        """
        cells, new_positions = self.claim(k.shape[2])
        return self.write(k, v, cells, new_positions, active)

    def claim(self, steps: int) -> tuple[Tensor, Tensor]:
        """The ring ``cells`` ``[B, T]`` and absolute ``positions`` ``[B, T]`` the next ``steps`` steps go to.
        Caches that always advance together (the layers of one transformer) can share them."""
        if steps > self.capacity:
            raise ValueError(f"cannot append {steps} steps to a ring of capacity {self.capacity}")
        new_positions = self.end[:, None] + torch.arange(steps, device=self.end.device)
        return new_positions % self.capacity, new_positions

    def write(self, k: Tensor, v: Tensor, cells: Tensor, new_positions: Tensor,
              active: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`append` at cells and positions from :meth:`claim` (this cache's or an equal one's)."""
        steps = k.shape[2]
        if active is not None:
            new_positions = torch.where(active[:, None], new_positions, self.positions.gather(1, cells))
            k = torch.where(active[:, None, None, None], k, self._gather(self.keys, cells))
            v = torch.where(active[:, None, None, None], v, self._gather(self.values, cells))
        index = cells[:, None, :, None].expand_as(k)
        self.keys.scatter_(2, index, k.to(self.keys.dtype))
        self.values.scatter_(2, index, v.to(self.values.dtype))
        self.positions.scatter_(1, cells, new_positions)
        self.end.add_(steps if active is None else active.long() * steps)
        return self.keys, self.values, self.positions

    @staticmethod
    def _gather(buffer: Tensor, cells: Tensor) -> Tensor:
        index = cells[:, None, :, None].expand(-1, buffer.shape[1], -1, buffer.shape[3])
        return buffer.gather(2, index)

    def reset(self, mask: Tensor) -> None:
        """Empty the slots selected by ``mask`` ``[B]`` (positions -1, end 0)."""
        self.positions.masked_fill_(mask[:, None], EMPTY_POSITION)
        self.end.masked_fill_(mask, 0)
