"""Ring key/value caches of every self-attention layer of a transformer stack: the one ring implementation, used by
the DSM LM's stacks (:mod:`dsmcli.engine.transformer`, one step per call) and by Mimi's transformer
(:mod:`dsmcli.codec.transformer`, ``T`` steps per call).

All layers of a stack append at the same steps for the same slots, so the bookkeeping is shared and done once per
call: :meth:`KVRings.claim` books ``T`` steps (which cell each slot writes, the absolute position each cell
holds); for the LM's one-step calls :meth:`KVRings.advance` also plans the attention (:class:`RingStep`: the cells
each slot attends over and the mask). A layer then only writes its key/value rows (:meth:`KVRings.write`, or
:meth:`KVRings.store` for a ``T``-step call) and attends.

* Cells ``0..C-1`` form the ring; cell ``C`` is a scratch cell: slots that do not advance (``active`` False) write
  there, so writes need no read-modify-write, and it is never attended to (its position stays -1).
* Positions are those the caller passes (one per slot and step); they must count the steps each slot advanced
  since its last reset, as the step engine's offsets do. So a slot that took ``n`` steps since its reset holds its
  keys in cells ``0..min(n, C)-1``, and it attends over exactly those (its length, a prefix of the ring), whatever
  the slot held before its reset and wherever its batch mates are: a slot's attention has the bits a fresh
  stream's would on the same input (and so its whole step, at the same batch size: tests/test_slot_reset.py). A
  fresh stream's first ``C`` steps therefore attend over the cells written so far, not over the whole (mostly
  empty) ring. ``static`` attends over the whole ring from the first step instead (fixed shapes for
  ``torch.compile`` / CUDA graphs; cells not yet written are masked).
* :meth:`KVRings.attend`: SDPA, or with ``attention`` not ``torch`` (float32 models on CPU, head dims a multiple of 16)
  the kernel ``dsmcli/kernels/decode_attention.cpp`` over rings stored in float16: half the bytes of the KV reads
  that dominate a step once the window is full (~200 MB per stt-1b step at batch 1, 3.2 GB at batch 16), read as
  several concurrent streams (~2x SDPA's 1-row GEMMs on float32 rings, 2.5-3x with float16). Attention outputs
  then differ from float32 SDPA by ~3e-4 relative (float16 keys and values), so only the int8 path uses it; the
  default path keeps SDPA. The kernel takes each slot's length; SDPA takes one length per call, so slots of
  different lengths are attended in separate calls. On CPU with several torch threads each slot gets its own
  call even when lengths agree: torch's CPU flash attention gives a row other last bits depending on which
  thread computes it (its MKL products take another code path there; ``MKL_CBWR=AUTO`` removes the
  difference), i.e. on the row's place in the batch. An extra call costs ~10-15 us (per slot and layer; about
  1 % of an stt-1b float32 step at batch 4); on one thread a batched call gives each row the bits of its own
  call, so slots of one length share a call there.
* Rings stepped without an ``active`` mask and never reset since :meth:`KVRings.restart` (the depformer's,
  restarted every main step) have one host-side length for all rows; otherwise (the backbone's) the lengths are
  read back to the host once per step (free on CPU; a synchronization on GPUs).
* Mimi's transformer claims ``T`` (2) steps per call and masks by absolute position over the whole ring
  (:meth:`KVRings.ring`, :func:`dsmcli.nn.attention.context_mask`), as the reference does: all ``T`` keys are
  written before any query attends, so once the ring has wrapped the first query of a call no longer sees its
  oldest allowed key (FORMAT.md §2.5). Its torch path gives the bits of the per-layer ring it replaced (SDPA on the
  same ring cells and mask). Its native step (``dsmcli/kernels/mimi_transformer.cpp``) reads and writes the same
  rings (float32, scratch cell included), books the positions itself and attends with the decode kernel's loop
  (``dsmcli/kernels/attention.h``, one loop for both kernels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from dsmcli.kernels import KernelChoice
from dsmcli.kernels.attention import decode_attention_op, ring_write_op

EMPTY_POSITION = -1
SCRATCH_CELLS = 1


def one_call_per_row(device: torch.device) -> bool:
    """Whether batched SDPA would give a row bits that depend on its place in the batch: on CPU with several torch
    threads (MKL's code path differs by thread; one thread computes a batched call as separate calls)."""
    return device.type == "cpu" and torch.get_num_threads() > 1


def sdpa_per_row(q: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """SDPA (no mask) whose rows do not depend on their place in the batch (see :func:`one_call_per_row`)."""
    if q.shape[0] == 1 or not one_call_per_row(q.device):
        return F.scaled_dot_product_attention(q, keys, values)
    return torch.cat([F.scaled_dot_product_attention(q[b : b + 1], keys[b : b + 1], values[b : b + 1])
                      for b in range(q.shape[0])])


@dataclass(frozen=True)
class RingStep:
    """One step's plan shared by the layers. index: the cell each slot writes (scratch if inactive), expanded to
    ``[B, H, 1, D]`` for the ring writes' ``scatter_``; mask: bool ``[B, 1, 1, span]`` keys each slot attends to
    (none past its length); span: cells attended (a prefix of the ring, the longest slot's); lengths: ``[B]``
    int64 cells each slot attends over (None: ``span`` for every slot); calls: the SDPA calls, ``(first row,
    end row, length)`` each."""

    index: Tensor
    mask: Tensor
    span: int
    lengths: Tensor | None
    calls: tuple[tuple[int, int, int], ...]


@dataclass
class KVRings:
    """keys, values: one ``[B, H, C + 1, D]`` tensor per layer (separate tensors, so that ``torch.compile`` updates
    them in place); positions: ``[B, C + 1]`` absolute position per cell (-1 = empty). ``filled``: cells every
    slot holds while ``uniform`` (every slot took the same steps since :meth:`restart`)."""

    keys: list[Tensor]
    values: list[Tensor]
    positions: Tensor
    context: int | None  # attention window in steps (None = unbounded)
    static: bool = False
    filled: int = 0
    uniform: bool = True
    native: Callable[..., Any] | None = None  # the native attention op, when used (then keys/values are float16)

    @classmethod
    def create(cls, num_layers: int, batch_size: int, num_heads: int, capacity: int, head_dim: int,
               context: int | None, device: torch.device | str, dtype: torch.dtype, static: bool = False,
               attention: KernelChoice = KernelChoice.TORCH) -> KVRings:
        if capacity <= 0:
            raise ValueError(f"KV ring capacity must be positive, got {capacity}")
        fits = (torch.device(device).type == "cpu" and dtype == torch.float32 and head_dim % 16 == 0
                and head_dim <= 256)
        native = decode_attention_op(attention, fits)
        storage = torch.float16 if native is not None else dtype  # the native kernel reads float16 rings
        shape = (batch_size, num_heads, capacity + SCRATCH_CELLS, head_dim)
        positions = torch.full((batch_size, capacity + SCRATCH_CELLS), EMPTY_POSITION, dtype=torch.long, device=device)
        keys, values = ([torch.zeros(shape, device=device, dtype=storage) for _ in range(num_layers)] for _ in range(2))
        return cls(keys, values, positions, context, static, native=native)

    @property
    def capacity(self) -> int:
        return self.positions.shape[1] - SCRATCH_CELLS

    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]

    def ring(self, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        """The ring without its scratch cell: ``layer``'s keys and values ``[B, H, C, D]`` and the positions
        ``[B, C]`` their cells hold (views), to attend over the whole ring."""
        capacity = self.capacity
        return (self.keys[layer][:, :, :capacity], self.values[layer][:, :, :capacity],
                self.positions[:, :capacity])

    def claim(self, positions: Tensor, active: Tensor | None) -> Tensor:
        """Book ``T`` steps of every layer for queries at ``positions`` ``[B, T]`` (``T`` <= capacity); ``active``
        ``[B]`` (None = all). Returns the cells ``[B, T]`` the steps go to (the scratch cell for inactive slots)."""
        capacity = self.capacity
        if positions.shape[1] > capacity:
            raise ValueError(f"cannot append {positions.shape[1]} steps to a ring of capacity {capacity}")
        cells = positions % capacity
        if active is not None:
            cells = torch.where(active[:, None], cells, capacity)
            positions = torch.where(active[:, None], positions, EMPTY_POSITION)
            self.uniform = False
        self.positions.scatter_(1, cells, positions)
        self.filled = min(capacity, self.filled + positions.shape[1])
        return cells

    def advance(self, positions: Tensor, active: Tensor | None) -> RingStep:
        """Book one step of every layer for queries at ``positions`` ``[B, 1]``; ``active`` ``[B]`` (None = all)."""
        capacity = self.capacity
        query = positions[:, 0]
        cells = self.claim(positions, active)[:, 0]
        held = query + 1  # cells a slot holds after this step, before the cap (a paused slot keeps its own)
        if active is not None:
            held = torch.where(active, held, query)
        lengths: Tensor | None = None
        if self.static:
            per_slot = [capacity] * self.batch_size
        elif self.uniform:
            per_slot = [self.filled] * self.batch_size
        else:
            lengths = held.clamp(1, capacity)  # >= 1: a slot with nothing to attend to reads finite garbage
            per_slot = lengths.tolist()
        span = max(per_slot)
        batch, heads, _, head_dim = self.keys[0].shape
        index = cells.view(-1, 1, 1, 1).expand(batch, heads, 1, head_dim)
        return RingStep(index, self._mask(positions, span, lengths), span, lengths, self._calls(per_slot))

    def _calls(self, lengths: list[int]) -> tuple[tuple[int, int, int], ...]:
        """SDPA calls over consecutive slots of one length; one per slot on CPU with several threads (see the
        module docstring)."""
        alone = one_call_per_row(self.positions.device)
        calls: list[tuple[int, int, int]] = []
        for row, length in enumerate(lengths):
            if calls and not alone and calls[-1][2] == length:
                calls[-1] = (calls[-1][0], row + 1, length)
            else:
                calls.append((row, row + 1, length))
        return tuple(calls)

    def _mask(self, positions: Tensor, span: int, lengths: Tensor | None) -> Tensor:
        keys = self.positions[:, None, :span]  # [B, 1, S]
        delta = positions[:, :, None] - keys
        allowed = (keys >= 0) & (delta >= 0)
        if self.context is not None:
            allowed &= delta < self.context
        own = None if lengths is None else torch.arange(span, device=keys.device) < lengths[:, None, None]
        if own is not None:
            allowed &= own
        # A slot that neither advances nor has history attends to all its cells (finite garbage, not NaN); its
        # output is discarded. Every advancing slot sees at least its own new key.
        nothing = ~allowed.any(dim=-1, keepdim=True)
        allowed |= nothing if own is None else nothing & own
        return allowed[:, None]

    def write(self, layer: int, step: RingStep, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k``, ``v`` ``[B, H, 1, D]`` of ``layer`` at the step's cells; returns its keys and values
        ``[B, H, span, D]`` to attend over (views of the ring: read them before the next write)."""
        keys, values = self.keys[layer], self.values[layer]
        if self.native is not None:  # float16 rings: torch's scatter_ is slow there (its library is loaded)
            write = cast(Callable[..., Any], ring_write_op(KernelChoice.NATIVE))
            write(keys, values, k.float().contiguous(), v.float().contiguous(), step.index[:, 0, 0, 0].contiguous())
        else:
            keys.scatter_(2, step.index, k.to(keys.dtype))
            values.scatter_(2, step.index, v.to(values.dtype))
        return keys[:, :, : step.span], values[:, :, : step.span]

    def store(self, layer: int, cells: Tensor, k: Tensor, v: Tensor) -> None:
        """Store ``k``, ``v`` ``[B, H, T, D]`` of ``layer`` at the ``cells`` ``[B, T]`` from :meth:`claim` (rings
        with torch attention: ``native`` None)."""
        index = cells[:, None, :, None].expand_as(k)
        self.keys[layer].scatter_(2, index, k.to(self.keys[layer].dtype))
        self.values[layer].scatter_(2, index, v.to(self.values[layer].dtype))

    def attend(self, layer: int, step: RingStep, q: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        """Attention of the queries ``q`` ``[B, H, 1, D]`` over ``layer``'s ``keys``/``values`` (from :meth:`write`)
        under the step's mask, each slot over its own length -> ``[B, H, 1, D]``."""
        if self.native is not None and q.dtype == torch.float32:
            return self.native(q.contiguous(), self.keys[layer], self.values[layer], step.mask, step.lengths)
        if len(step.calls) == 1:
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=step.mask)
        return torch.cat([F.scaled_dot_product_attention(q[a:b], keys[a:b, :, :n], values[a:b, :, :n],
                                                         attn_mask=step.mask[a:b, :, :, :n])
                          for a, b, n in step.calls])

    def reset(self, mask: Tensor) -> None:
        """Empty the slots selected by ``mask`` ``[B]``: they start again from cell 0 and attend over the cells
        they write from then on (what a fresh ring holds)."""
        self.positions.masked_fill_(mask[:, None], EMPTY_POSITION)
        self.uniform = False

    def restart(self) -> None:
        """Empty every slot (the depformer does this at each main step)."""
        self.positions.fill_(EMPTY_POSITION)
        self.filled = 0
        self.uniform = True
