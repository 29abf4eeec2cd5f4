"""The depth transformer ("depformer"): per main step, predicts the audio codebooks one after the other
(FORMAT.md §3.5).

Codebook ``k`` reads ``input_projs[input_schedule[k]](h)`` (``h`` = backbone output ``[B, 1, D]``) plus the
embedding of the previous token (the text token for ``k = 0``, audio token ``k - 1`` otherwise), runs the stack
with weight set ``schedule[k]`` at position ``k``, and ``heads[k]`` gives its logits. The KV rings hold one
step per codebook and are emptied at the start of every main step (:meth:`DepformerState.restart`).

On CPU in float32 the stack, output norm and head of a sub-step run in one native call
(:mod:`dsmcli.engine.depformer_native`) unless ``native_step`` is False; the torch path is the fallback.
:meth:`Depformer.sample_frame` runs all the sub-steps of a main step, their sampling included, in one native
call (same tokens and random draws as the per-sub-step loop) unless ``native_frame`` is False.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from dsmcli.engine.config import DepformerConfig, LMConfig
from dsmcli.engine.depformer_native import NativeDepformer, native_depformer
from dsmcli.engine.embeddings import TokenEmbedding
from dsmcli.engine.transformer import Transformer, TransformerState
from dsmcli.kernels import KernelChoice
from dsmcli.nn import make_norm
from dsmcli.nn.linear import linear


@dataclass
class DepformerState:
    """Rings of ``dep_q`` cells per layer for a batch of ``B`` slots, and the per-codebook positions ``[B, 1]``."""

    transformer: TransformerState
    positions: Tensor  # [num_codebooks, B, 1]: codebook k sits at position k
    native_keys: Tensor | None = None  # [L, B, H, num_codebooks, head_dim]: the native sub-steps' cache
    native_values: Tensor | None = None
    native: NativeDepformer | None = None  # the native sub-step runner of this stream (its kernel choice), or None

    def restart(self) -> None:
        """Empty the rings (every main step starts the depformer afresh)."""
        self.transformer.rings.restart()


class Depformer(nn.Module):
    """Weights: ``input_projs.{i}`` ``[Dd, D]``, ``text_emb``/``audio_emb.{k}`` token embeddings,
    ``transformer.layers.*``, ``out_norms.{k}`` (if ``depformer_norm``), ``heads.{k}`` ``[card, Dd]``."""

    def __init__(self, lm: LMConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        cfg = lm.depformer
        if cfg is None:
            raise ValueError("this model has no depformer (dep_q = 0)")
        self.config: DepformerConfig = cfg
        dim = cfg.dim
        self.input_projs = nn.ModuleList([nn.Linear(lm.dim, dim, bias=False, device=device, dtype=dtype)
                                          for _ in range(cfg.num_input_projections)])
        self.text_emb = TokenEmbedding(lm.text_vocab_in, dim, cfg.low_rank, lm.demux_second_stream, device, dtype)
        self.audio_emb = nn.ModuleList([TokenEmbedding(lm.card + 1, dim, cfg.low_rank, device=device, dtype=dtype)
                                        for _ in range(cfg.num_codebooks - 1)])
        self.transformer = Transformer(cfg.transformer, device, dtype)
        self.out_norms = nn.ModuleList([make_norm(cfg.out_norm, dim, device=device, dtype=dtype)
                                        if cfg.out_norm is not None else nn.Identity()
                                        for _ in range(cfg.num_codebooks)])
        self.heads = nn.ModuleList([nn.Linear(dim, lm.card, bias=lm.bias_proj, device=device, dtype=dtype)
                                    for _ in range(cfg.num_codebooks)])
        self.native_step = True  # sub-steps in one native call where supported (False: always the torch path)
        self.native_frame = True  # all sub-steps of a main step in one native call (needs native_step)
        # the native runners by kernel choice, built at the first init_state that asks (they hold the weights)
        self._native: dict[KernelChoice, NativeDepformer | None] = {}

    def native(self, dtype: torch.dtype, device: torch.device | str,
               kernels: KernelChoice | str = KernelChoice.AUTO) -> NativeDepformer | None:
        """The native sub-step runner under ``kernels``, or None (``torch``, ``native_step`` off, or not supported
        here; ``native`` and a kernel that cannot be built: :class:`~dsmcli.kernels.KernelUnavailable`)."""
        if not self.native_step:
            return None
        choice = KernelChoice(kernels)
        if choice not in self._native:
            self._native[choice] = native_depformer(self, dtype, torch.device(device), choice)
        return self._native[choice]

    def init_state(self, batch_size: int, device: torch.device | str, dtype: torch.dtype,
                   kernels: KernelChoice | str = KernelChoice.AUTO) -> DepformerState:
        """Empty rings for ``batch_size`` slots; ``kernels``: the stream's choice for the native sub-steps."""
        transformer = self.transformer.init_state(batch_size, self.config.num_codebooks, device, dtype)
        positions = torch.arange(self.config.num_codebooks, device=device).view(-1, 1, 1).expand(-1, batch_size, 1)
        state = DepformerState(transformer, positions.contiguous(), native=self.native(dtype, device, kernels))
        if state.native is not None:
            t = self.config.transformer
            shape = (t.num_layers, batch_size, t.num_heads, self.config.num_codebooks, t.head_dim)
            state.native_keys = torch.zeros(shape, device=device, dtype=torch.float32)
            state.native_values = torch.zeros(shape, device=device, dtype=torch.float32)
        return state

    def logits(self, k: int, previous: Tensor, hidden: Tensor, state: DepformerState) -> Tensor:
        """Logits ``[B, card]`` of codebook ``k`` given the previous token ``[B]`` (text for ``k = 0``) and the
        backbone output ``hidden`` ``[B, 1, D]``. Call with ``k = 0, 1, ...`` after :meth:`DepformerState.restart`."""
        cfg = self.config
        x = linear(hidden, cast(nn.Linear, self.input_projs[cfg.input_schedule[k]]).weight)
        embedding = self.text_emb if k == 0 else self.audio_emb[k - 1]
        x = x + embedding(previous[:, None])
        if state.native_keys is not None and state.native_values is not None:
            native = state.native if self.native_step else None
            logits = None if native is None else native.logits(k, x, state.native_keys, state.native_values)
            if logits is not None:
                return logits
        out = self.transformer(x, state.positions[k], state.transformer, None, cfg.transformer.weight_set(k))
        head = cast(nn.Linear, self.heads[k])
        return linear(self.out_norms[k](out), head.weight, head.bias)[:, 0]

    def sample_frame(self, previous: Tensor, hidden: Tensor, state: DepformerState, count: int, temp: float,
                     top_k: int, cfg_coef: float, generator: torch.Generator | None) -> Tensor | None:
        """The tokens ``[B, count]`` of codebooks ``0 .. count - 1`` in one native call: each sub-step's logits
        (CFG-mixed when ``cfg_coef`` != 1, rows ``[2B]``) sampled as :func:`~dsmcli.engine.sampling.sample_token`
        samples them, with the same random draws in the same order, so the same tokens as calling :meth:`logits`
        and ``sample_token`` per codebook. ``previous``: the text tokens ``[R]`` of the model rows. None when the
        native path does not apply (then loop over :meth:`logits`)."""
        if not self.native_frame or state.native_keys is None or state.native_values is None or count <= 0:
            return None
        native = state.native if self.native_step else None
        if native is None or native.frame_op is None or native.frame_arguments() is None:
            return None
        first = self.text_emb(previous[:, None])
        return native.frame(first, hidden, state.native_keys, state.native_values, count, temp, top_k, cfg_coef,
                            generator)
