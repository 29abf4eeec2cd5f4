"""A preallocated ring key/value cache holding the last ``capacity`` steps of each batch slot.

Every slot has its own write position (``end``) and remembers the absolute position of what each
ring cell holds (``positions``, -1 for a cell never written since the last reset), so attention
masks are built from positions alone (see :func:`dsmcli.nn.attention.context_mask`) and slots can
start, pause (``active``) and reset independently. No host synchronisation happens here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
        steps = k.shape[2]
        if steps > self.capacity:
            raise ValueError(f"cannot append {steps} steps to a ring of capacity {self.capacity}")
        offsets = torch.arange(steps, device=self.end.device)
        new_positions = self.end[:, None] + offsets  # [B, T]
        cells = new_positions % self.capacity
        if active is not None:
            new_positions = torch.where(active[:, None], new_positions, self.positions.gather(1, cells))
            k = torch.where(active[:, None, None, None], k, self._gather(self.keys, cells))
            v = torch.where(active[:, None, None, None], v, self._gather(self.values, cells))
        index = cells[:, None, :, None].expand_as(k)
        self.keys.scatter_(2, index, k.to(self.keys.dtype))
        self.values.scatter_(2, index, v.to(self.values.dtype))
        self.positions.scatter_(1, cells, new_positions)
        advance = steps if active is None else active.long() * steps
        self.end.add_(advance)
        return self.keys, self.values, self.positions

    @staticmethod
    def _gather(buffer: Tensor, cells: Tensor) -> Tensor:
        index = cells[:, None, :, None].expand(-1, buffer.shape[1], -1, buffer.shape[3])
        return buffer.gather(2, index)

    def reset(self, mask: Tensor) -> None:
        """Empty the slots selected by ``mask`` ``[B]`` (positions -1, end 0)."""
        self.positions.masked_fill_(mask[:, None], EMPTY_POSITION)
        self.end.masked_fill_(mask, 0)


@dataclass
class StackedRingKVCache:
    """Ring key/value caches of all ``L`` layers of one transformer, which always write the same cells.

    The cells a step writes and their positions are worked out once per step (:meth:`claim`), then
    each layer stores its keys and values with one indexed write (:meth:`write`). Same semantics as
    one :class:`RingKVCache` per layer. Storage: ``kv`` ``[L, 2, B, H, C + 1, D]`` (keys then values,
    each head's cells contiguous for attention; cell ``C`` of every slot is scratch that paused slots
    write to); ``positions`` ``[B, C + 1]`` absolute position per cell (-1 = empty); ``end`` ``[B]``
    next position of each slot.
    """

    kv: Tensor
    positions: Tensor
    end: Tensor
    _slots: Tensor = field(init=False, repr=False)  # [B, 1] slot index, for indexed writes
    _targets: list[Tensor] = field(init=False, repr=False)  # per layer, kv[l] as [B, C + 1, 2, H, D]

    def __post_init__(self) -> None:
        self._slots = torch.arange(self.batch_size, device=self.end.device)[:, None]
        self._targets = [layer.permute(1, 3, 0, 2, 4) for layer in self.kv]

    @classmethod
    def create(cls, num_layers: int, batch_size: int, num_heads: int, capacity: int, head_dim: int,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> StackedRingKVCache:
        if capacity <= 0:
            raise ValueError(f"KV cache capacity must be positive, got {capacity}")
        return cls(
            kv=torch.zeros(num_layers, 2, batch_size, num_heads, capacity + 1, head_dim, device=device, dtype=dtype),
            positions=torch.full((batch_size, capacity + 1), EMPTY_POSITION, device=device, dtype=torch.long),
            end=torch.zeros(batch_size, device=device, dtype=torch.long),
        )

    @property
    def batch_size(self) -> int:
        return self.end.shape[0]

    @property
    def capacity(self) -> int:
        return self.positions.shape[1] - 1

    @property
    def slot_positions(self) -> Tensor:
        """``[B, C]`` absolute position held by each cell (-1 = empty): the key positions to mask with."""
        return self.positions[:, :-1]

    def layer(self, index: int) -> tuple[Tensor, Tensor]:
        """Keys and values of layer ``index``, each ``[B, H, C, D]`` (views into the storage)."""
        return self.kv[index, 0, :, :, :-1], self.kv[index, 1, :, :, :-1]

    def claim(self, steps: int, active: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Reserve the cells of the next ``steps`` steps of every slot (of the ``active`` ``[B]`` ones only,
        if given) and record their positions. Returns ``(cells [B, T] for write, positions [B, T] of the
        new steps)``; paused slots get the scratch cell and keep their state."""
        if steps > self.capacity:
            raise ValueError(f"cannot append {steps} steps to a ring of capacity {self.capacity}")
        new_positions = self.end[:, None] + torch.arange(steps, device=self.end.device)  # [B, T]
        cells = new_positions % self.capacity
        if active is not None:
            cells = torch.where(active[:, None], cells, self.capacity)
        self.positions.scatter_(1, cells, new_positions)
        self.end.add_(steps if active is None else active.long() * steps)
        return cells, new_positions

    def write(self, index: int, kv: Tensor, cells: Tensor) -> None:
        """Store layer ``index``'s keys and values ``kv`` ``[B, T, 2, H, D]`` at the claimed ``cells``."""
        self._targets[index].index_put_((self._slots, cells), kv.to(self.kv.dtype))

    def reset(self, mask: Tensor) -> None:
        """Empty the slots selected by ``mask`` ``[B]`` (positions -1, end 0)."""
        self.positions.masked_fill_(mask[:, None], EMPTY_POSITION)
        self.end.masked_fill_(mask, 0)
