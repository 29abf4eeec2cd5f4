"""The delayed-streams step loop (FORMAT.md §3.7, §4): one call of :meth:`LMStream.step` = one 80 ms step.

Each batch slot has a token ring ``[n_q + 1, CT]`` (``CT = max(delays) + 2``) and its own offset ``o`` (steps
taken). At a step, for every slot:

1. the caller's audio codes (streams ``G+1 .. n_q``, ``G`` = generated codebooks) are written at ring cell
   ``(o + delay_k) mod CT``;
2. the model reads cell ``o mod CT`` of every stream, or the stream's initial token while ``o <= delay_k``
   (so at ``o = 0`` every stream is initial);
3. the text token is sampled (after CFG mixing and the ``text_logits`` hook) and may be rewritten by the
   ``text_token`` hook; the depformer samples the ``G`` generated codebooks (or ``replace_audio`` is used), which
   the ``audio_tokens`` hook may rewrite;
4. ``o`` advances, the text and generated tokens are written at cell ``o mod CT``;
5. the time-aligned frame ``[text, audio_1 .. audio_G]`` of time ``o - 1 - max_delay`` is gathered; it is valid
   once ``o > max_delay``.

Slots are independent: ``active`` ``[B]`` selects the slots that step (the others keep their whole state), and
:meth:`StreamState.reset` restarts chosen slots. A slot's conditions can be prepared once
(:meth:`LMStream.project_condition`: a voice's cross-attention source projected when the voice is made) and
given to :meth:`LMStream.init_state` / :meth:`LMStream.set_condition`, which then only copy (or, for one slot,
reference) them. A slot's logits are the same bits whatever ran in it before,
which slot it is and what its batch mates do (at a given batch size and torch thread count, on CPU: see
:mod:`dsmcli.nn.kv_rings`; the samplers' random draws are shared by the batch). Real CFG (``cfg_coef != 1``)
runs the model on ``2B`` rows (conditional then unconditional); the token ring and the outputs stay
``[B, ...]``. Inside a step only the slots' attention lengths are read back to the host (hooks may read more).
How the model part runs (static shapes, ``torch.compile``) is chosen
by :class:`~dsmcli.engine.options.EngineOptions`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dsmcli.engine.conditioning import ConditionInputs, ConditionTensors
from dsmcli.engine.config import UNGENERATED_TOKEN_ID, ZERO_TOKEN_ID
from dsmcli.engine.depformer import DepformerState
from dsmcli.engine.lm import LM
from dsmcli.engine.options import EngineOptions
from dsmcli.engine.sampling import SamplingOptions, cfg_mix, sample_token
from dsmcli.engine.transformer import TransformerState

NOT_MASKED = -1  # cfg_masked_until value of a slot whose unconditional inputs are never masked


@dataclass(frozen=True)
class StepInfo:
    """What hooks know about the step: ``offsets`` ``[B]`` (step index of each slot before this step) and
    ``active`` ``[B]`` (slots that advance; outputs of the others are discarded)."""

    offsets: Tensor
    active: Tensor


Hook = Callable[[Tensor, StepInfo], Tensor]


@dataclass(frozen=True)
class StepHooks:
    """Callbacks run inside a step. Each returns the tensor to use (it may edit its argument and return it).

    text_logits: ``[B, text_card_out]`` float32, before sampling. text_token: ``[B]`` sampled token -> token
    written to the stream and fed to the depformer. audio_tokens: ``[B, G]`` -> tokens written to the stream.
    """

    text_logits: Hook | None = None
    text_token: Hook | None = None
    audio_tokens: Hook | None = None


@dataclass(frozen=True)
class StepOutput:
    """Result of one step for ``B`` slots (entries of inactive slots are meaningless)."""

    text_tokens: Tensor  # [B] long: token written to the text stream at this step
    text_logits: Tensor  # [B, text_card_out] float32: the logits it was sampled from
    audio_tokens: Tensor | None  # [B, G] long: generated codebooks (None when G = 0)
    frame: Tensor  # [B, G + 1] long: time-aligned [text, audio...]; -2 where not valid
    frame_valid: Tensor  # [B] bool
    extra_probs: Tensor | None  # [B, heads, classes] softmax of the extra heads (None without heads)


@dataclass(frozen=True)
class PreparedCondition:
    """One slot's conditions in the form a stream uses them (:meth:`LMStream.project_condition`), made once per
    voice instead of in a fresh stream's first step. ``rows`` = 2 under real CFG (conditional, then
    unconditional, as :meth:`LMStream.init_state` derives it), else 1.

    ``sum``: ``[rows, 1, D]`` (None without a sum condition); ``cross``: per layer the cross-attention ``(keys,
    values)`` ``[rows, H, S, head_dim]`` (None without cross-attention), float16 contiguous when ``native`` (the
    stream's cross-attention runs the native decode op), else of the model dtype. Streams only read these
    tensors: a batch-1 stream references them, a larger one copies them into its own."""

    sum: Tensor | None
    cross: tuple[tuple[Tensor, Tensor], ...] | None
    cfg: bool
    native: bool

    @property
    def source_length(self) -> int | None:
        """``S``: cross-attention source rows (None without cross-attention)."""
        return None if not self.cross else int(self.cross[0][0].shape[2])


Conditions = ConditionInputs | Sequence[PreparedCondition | None]


@dataclass
class StreamState:
    """Streaming state of ``B`` slots; the model-side parts have ``B' = 2B`` rows under real CFG.

    ``cfg_masked_until`` ``[B]``: under real CFG, the unconditional row sees -1 on stream ``k`` while
    ``offset <= delay_k + cfg_masked_until`` (audio-prefix masking); ``NOT_MASKED`` disables it. Edit it in place.
    """

    tokens: Tensor  # [B, n_q + 1, CT] long ring, -2 = not generated
    offsets: Tensor  # [B] long
    backbone: TransformerState
    depformer: DepformerState | None
    condition_sum: Tensor | None  # [B', 1, D]
    cfg_masked_until: Tensor  # [B] long
    audio: Tensor  # [B, G] long scratch for the depformer's tokens
    cfg: bool
    all_active: Tensor = field(repr=False)  # [B] bool, all True

    @property
    def batch_size(self) -> int:
        return self.offsets.shape[0]

    def model_rows(self, per_slot: Tensor) -> Tensor:
        """A per-slot tensor ``[B, ...]`` repeated for the model rows (``[2B, ...]`` under CFG)."""
        return torch.cat([per_slot, per_slot]) if self.cfg else per_slot

    def reset(self, mask: Tensor) -> None:
        """Restart the slots selected by ``mask`` ``[B]`` (offset 0, empty rings); conditions are kept."""
        self.offsets = torch.where(mask, torch.zeros_like(self.offsets), self.offsets)
        self.tokens.masked_fill_(mask[:, None, None], UNGENERATED_TOKEN_ID)
        self.backbone.reset(self.model_rows(mask))


def _merge_rows(old: Tensor | None, new: Sequence[Tensor | None], selected: Sequence[bool], cfg: bool) -> Tensor:
    """Model rows ``[B', ...]`` taking slot ``b``'s rows from ``new[b]`` (``[1 or 2, ...]``, its conditional then
    unconditional row) where ``selected[b]``, else from ``old`` (rows ``b`` and ``B + b`` under CFG). A batch of
    one slot replaced is ``new[0]`` itself (referenced, not copied)."""
    batch = len(selected)
    if batch == 1 and selected[0]:
        return new[0]  # type: ignore[return-value]
    pieces = []
    for half in range(2 if cfg else 1):
        for b, keep in enumerate(selected):
            row = half * batch + b
            pieces.append(new[b][half : half + 1] if keep else old[row : row + 1])  # type: ignore[index]
    return torch.cat(pieces)


def _masked_scatter(ring: Tensor, index: Tensor, values: Tensor, mask: Tensor) -> None:
    """``ring.scatter_(-1, index, values)`` where ``mask`` is True, leaving the other cells untouched."""
    ring.scatter_(-1, index, torch.where(mask, values, ring.gather(-1, index)))


class LMStream:
    """Step engine over an :class:`LM`. ``num_generated`` (default ``dep_q``) codebooks come from the depformer;
    the remaining audio streams are inputs (the TTS with fewer codebooks feeds them -1). ``cfg_no_text``: under
    real CFG the unconditional rows see no text and text logits are not guided. ``engine``: how the model part
    runs (:class:`EngineOptions`: static shapes, ``torch.compile``, the native kernels)."""

    def __init__(self, lm: LM, options: SamplingOptions | None = None, *, hooks: StepHooks | None = None,
                 cfg_no_text: bool = False, num_generated: int | None = None,
                 generator: torch.Generator | None = None, engine: EngineOptions | None = None):
        cfg = lm.config
        self.lm, self.cfg_no_text, self.generator = lm, cfg_no_text, generator
        self.options = SamplingOptions() if options is None else options
        self.engine = EngineOptions() if engine is None else engine
        self._model_step = self.engine.wrap(lm.step)
        self.hooks = StepHooks() if hooks is None else hooks
        self.num_generated = cfg.dep_q if num_generated is None else num_generated
        if not 0 <= self.num_generated <= cfg.dep_q:
            raise ValueError(f"num_generated must be within 0..{cfg.dep_q}, got {num_generated}")
        device = lm.device
        self.delays = torch.tensor(cfg.delays, dtype=torch.long, device=device)  # [K]
        self.ring_size = cfg.max_delay + 2
        initial = [cfg.text_initial_id] + [cfg.audio_initial_id] * cfg.n_q
        self.initial = torch.tensor(initial, dtype=torch.long, device=device)[:, None]  # [K, 1]

    @property
    def cross_native(self) -> Callable | None:
        """The native decode op this stream's cross-attention uses (its keys/values float16), or None."""
        if not hasattr(self, "_cross_native"):
            lm = self.lm
            self._cross_native = lm.transformer.cross_native_op(lm.device, lm.attention_kernels(self.engine.kernels))
        return self._cross_native

    @property
    def num_inputs(self) -> int:
        """Audio streams supplied by the caller at each step."""
        return self.lm.config.n_q - self.num_generated

    # ------------------------------------------------------------------------------------ state
    @torch.no_grad()
    def project_condition(self, condition: ConditionInputs | None) -> PreparedCondition | None:
        """One slot's conditions (``condition`` of batch 1) encoded and projected for this stream's kind (real
        CFG or not, native cross-attention or not): what :meth:`init_state` / :meth:`set_condition` would compute
        in the stream's first step (None: no conditions). The cross-attention source is projected layer by
        layer (tts-1.6b, a 10 s voice: ~10 GFLOP a layer)."""
        if condition is None or not (condition.values or condition.tensors):
            return None
        if condition.batch_size != 1:
            raise ValueError(f"project_condition takes one slot's conditions, got {condition.batch_size}")
        fused = self._encode(condition, 1)
        native = self.cross_native
        cross = None
        if self.lm.config.transformer.cross_attention:
            cross = tuple(self.lm.transformer.cross_source_layers(fused.cross, native))
        return PreparedCondition(fused.sum, cross, self.options.uses_cfg, native is not None)

    def accepts(self, prepared: PreparedCondition | None) -> bool:
        """Whether ``prepared`` was made for a stream like this one (same CFG rows, same cross-attention dtype);
        else project the slot's conditions again (:meth:`project_condition`)."""
        if prepared is None:
            return True
        if prepared.cfg != self.options.uses_cfg or prepared.native != (self.cross_native is not None):
            return False
        if prepared.cross:
            dtype = torch.float16 if prepared.native else self.lm.dtype
            return prepared.cross[0][0].dtype == dtype and len(prepared.cross) == self.lm.config.transformer.num_layers
        return True

    def _checked(self, prepared: Sequence[PreparedCondition | None], batch_size: int,
                 selected: Sequence[bool]) -> list[PreparedCondition] | None:
        """The prepared conditions of the ``selected`` slots, checked (None: the stream has no conditions)."""
        if len(prepared) != batch_size:
            raise ValueError(f"{len(prepared)} prepared conditions for {batch_size} slots")
        chosen = [p for p, keep in zip(prepared, selected) if keep]
        if all(p is None for p in chosen):
            return None
        for p in chosen:
            if p is None:
                raise ValueError("some slots have prepared conditions and some none")
            if not self.accepts(p):
                raise ValueError(f"a condition prepared for another stream kind (real CFG {p.cfg}, native "
                                 f"cross-attention {p.native}) cannot condition this one: project it again")
        return chosen  # type: ignore[return-value]

    @torch.no_grad()
    def init_state(self, batch_size: int, condition: Conditions | None = None,
                   cfg_masked_until: Sequence[int] | None = None) -> StreamState:
        """A fresh stream of ``batch_size`` slots. ``condition`` describes each slot's conditions (the unconditional
        half of real CFG is derived from it), or gives them prepared, one per slot (:meth:`project_condition`:
        nothing is projected here); ``cfg_masked_until`` see :class:`StreamState`."""
        if condition is None or isinstance(condition, ConditionInputs):
            return self._new_state(batch_size, self._encode(condition, batch_size), cfg_masked_until)
        slots = self._checked(condition, batch_size, [True] * batch_size)
        if slots is None:
            return self._new_state(batch_size, self._encode(None, batch_size), cfg_masked_until)
        use_cfg, merge = self.options.uses_cfg, [True] * batch_size
        summed = None if slots[0].sum is None else _merge_rows(None, [p.sum for p in slots], merge, use_cfg)
        if not slots[0].cross:
            return self._new_state(batch_size, ConditionTensors(summed, None), cfg_masked_until)
        if len({p.source_length for p in slots}) != 1:
            raise ValueError("prepared cross-attention sources of different lengths")
        layers = [[p.cross[i] for p in slots] for i in range(len(slots[0].cross))]  # type: ignore[index]
        cross = [(_merge_rows(None, [kv[0] for kv in layer], merge, use_cfg),
                  _merge_rows(None, [kv[1] for kv in layer], merge, use_cfg)) for layer in layers]
        return self._new_state(batch_size, ConditionTensors(summed, None), cfg_masked_until, cross)

    def _new_state(self, batch_size: int, fused: ConditionTensors, cfg_masked_until: Sequence[int] | None,
                   cross: list[tuple[Tensor, Tensor]] | None = None) -> StreamState:
        """A fresh state over ``fused`` conditions, or over prepared per-layer cross-attention ``cross``."""
        lm, device, use_cfg = self.lm, self.lm.device, self.options.uses_cfg
        rows = 2 * batch_size if use_cfg else batch_size
        masked = [NOT_MASKED] * batch_size if cfg_masked_until is None else list(cfg_masked_until)
        if len(masked) != batch_size:
            raise ValueError(f"cfg_masked_until has {len(masked)} entries for {batch_size} slots")
        kernels = self.engine.kernels
        depformer = None if lm.depformer is None else lm.depformer.init_state(rows, device, lm.dtype, kernels)
        return StreamState(
            tokens=torch.full((batch_size, lm.config.num_streams, self.ring_size), UNGENERATED_TOKEN_ID,
                              dtype=torch.long, device=device),
            offsets=torch.zeros(batch_size, dtype=torch.long, device=device),
            backbone=lm.init_state(rows, fused.cross, self.engine.uses_static_shapes, kernels, self.engine.compile,
                                   cross),
            depformer=depformer,
            condition_sum=fused.sum,
            cfg_masked_until=torch.tensor(masked, dtype=torch.long, device=device),
            audio=torch.zeros(batch_size, self.num_generated, dtype=torch.long, device=device),
            cfg=use_cfg, all_active=torch.ones(batch_size, dtype=torch.bool, device=device),
        )

    def _encode(self, condition: ConditionInputs | None, batch_size: int) -> ConditionTensors:
        if condition is not None and not (condition.values or condition.tensors):
            condition = None
        if condition is not None and condition.batch_size != batch_size:
            raise ValueError(f"condition has {condition.batch_size} slots, the stream {batch_size}")
        if condition is not None and self.options.uses_cfg:
            condition = ConditionInputs.concat([condition, condition.null()])
        return self.lm.encode_conditions(condition)

    @torch.no_grad()
    def set_condition(self, state: StreamState, condition: Conditions, mask: Tensor) -> None:
        """Give the slots selected by ``mask`` ``[B]`` the conditions of the same slots of ``condition`` (e.g. a new
        voice for a slot being reset), or their prepared conditions (one entry per slot, those of the slots not
        selected are ignored: nothing is projected here). Cross-attention sources must keep their length."""
        if not isinstance(condition, ConditionInputs):
            self._set_prepared(state, condition, mask)
            return
        fused = self._encode(condition, state.batch_size)
        rows = state.model_rows(mask)
        if fused.sum is not None and state.condition_sum is not None:
            state.condition_sum = torch.where(rows[:, None, None], fused.sum, state.condition_sum)
        # one layer at a time: the new source's keys/values never exist for every layer at once next to the old
        # ones (tts-1.6b, a 10 s voice: 82 MB a copy, which stayed in the heap as a peak of the process)
        for i, (k_new, v_new) in enumerate(self.lm.transformer.cross_source_layers(fused.cross, state.backbone.cross_native)):
            if state.backbone.cross is None:
                break
            k_old, v_old = state.backbone.cross[i]
            if k_new.shape != k_old.shape:
                raise ValueError(f"cross-attention source shape {tuple(k_new.shape)} != {tuple(k_old.shape)}")
            keep = rows[:, None, None, None]
            state.backbone.cross[i] = (torch.where(keep, k_new, k_old), torch.where(keep, v_new, v_old))
            del k_new, v_new, k_old, v_old

    def _set_prepared(self, state: StreamState, prepared: Sequence[PreparedCondition | None], mask: Tensor) -> None:
        selected = [bool(m) for m in mask.tolist()]
        slots = self._checked(prepared, state.batch_size, selected)
        if slots is None:
            return
        chosen = iter(slots)
        new = [next(chosen) if keep else None for keep in selected]  # per slot, None where kept
        cross = state.backbone.cross
        if cross is not None:
            if slots[0].cross is None:
                raise ValueError("the prepared conditions have no cross-attention source")
            old_length = cross[0][0].shape[2]
            lengths = {p.source_length for p in slots}
            if lengths != {old_length}:
                raise ValueError(f"cross-attention source length {sorted(lengths)} != {old_length}")
        if state.condition_sum is not None and slots[0].sum is not None:
            state.condition_sum = _merge_rows(state.condition_sum, [None if p is None else p.sum for p in new],
                                              selected, state.cfg)
        # one layer at a time (a batch of several slots builds new tensors: the old ones of a layer go as soon as
        # its new ones exist); nothing is written into a prepared tensor, a batch-1 stream references them
        for i in range(0 if cross is None else len(cross)):
            k_old, v_old = cross[i]  # type: ignore[index]
            layer = [None if p is None else p.cross[i] for p in new]  # type: ignore[index]
            cross[i] = (_merge_rows(k_old, [None if kv is None else kv[0] for kv in layer], selected, state.cfg),
                        _merge_rows(v_old, [None if kv is None else kv[1] for kv in layer], selected, state.cfg))
            del k_old, v_old, layer

    # ------------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, audio_codes: Tensor | None, state: StreamState, active: Tensor | None = None,
             replace_audio: Tensor | None = None, audio_needed: int | None = None) -> StepOutput:
        """One step. ``audio_codes`` ``[B, n, 1]`` or ``[B, n]`` with ``n >= num_inputs`` (extra rows ignored; None =
        all -1); ``active`` ``[B]`` bool (None = all); ``replace_audio`` ``[B, G(, 1)]`` skips the depformer;
        ``audio_needed``: only the first ``audio_needed`` generated codebooks are used by the caller (e.g. the rest
        are forced to -1 during the audio delay): the depformer stops there, the others are -1, and their random
        draws are still made, so every later draw is the one the full depformer would make."""
        active = state.all_active if active is None else active.to(torch.bool)
        info = StepInfo(state.offsets, active)
        self._write_inputs(state, audio_codes, active)
        inputs = self._model_inputs(state, active)
        positions = state.model_rows(state.offsets)[:, None]
        model = self._model_step(inputs, positions, state.backbone, state.model_rows(active), state.condition_sum)
        text_logits, text = self._sample_text(model.text_logits, info)
        audio = self._sample_audio(text, model.hidden, state, info, replace_audio, audio_needed)
        self._advance(state, text, audio, active)
        frame, valid = self._frame(state, active)
        extra = None if model.extra_probs is None else model.extra_probs[: state.batch_size, 0]
        return StepOutput(text, text_logits, audio, frame, valid, extra)

    def _write_inputs(self, state: StreamState, audio_codes: Tensor | None, active: Tensor) -> None:
        n_in = self.num_inputs
        if n_in == 0:
            return
        batch, first = state.batch_size, self.num_generated + 1
        if audio_codes is None:
            codes = torch.full((batch, n_in, 1), ZERO_TOKEN_ID, dtype=torch.long, device=state.tokens.device)
        else:
            codes = audio_codes if audio_codes.dim() == 3 else audio_codes[:, :, None]
            if codes.shape[0] != batch or codes.shape[1] < n_in:
                raise ValueError(f"expected audio codes [{batch}, >={n_in}, 1], got {tuple(audio_codes.shape)}")
            codes = codes[:, :n_in].to(torch.long)
        cells = (state.offsets[:, None, None] + self.delays[first:, None]) % self.ring_size
        _masked_scatter(state.tokens[:, first:], cells, codes, active[:, None, None])

    def _model_inputs(self, state: StreamState, active: Tensor) -> Tensor:
        """Tokens ``[B', K, 1]`` the model reads at this step (initial tokens where ``o <= delay``)."""
        offsets = state.offsets[:, None, None]
        is_init = (offsets <= self.delays[:, None]) | ~active[:, None, None]  # [B, K, 1]
        cells = (offsets % self.ring_size).expand(-1, self.lm.config.num_streams, 1)
        inputs = torch.where(is_init, self.initial, state.tokens.gather(2, cells))
        if not state.cfg:
            return inputs
        zero = torch.full((), ZERO_TOKEN_ID, dtype=torch.long, device=inputs.device)
        limit = self.delays[:, None] + state.cfg_masked_until[:, None, None]
        unconditional = torch.where((offsets <= limit) & ~is_init, zero, inputs)
        if self.cfg_no_text:
            unconditional[:, :1] = torch.where(is_init[:, :1], unconditional[:, :1], zero)
        return torch.cat([inputs, unconditional])

    def _sample_text(self, logits: Tensor, info: StepInfo) -> tuple[Tensor, Tensor]:
        """``logits`` ``[B', 1, text_card_out]`` -> (float32 logits ``[B, V]``, sampled tokens ``[B]``)."""
        logits = logits[:, 0]
        if self.options.uses_cfg:
            conditional, unconditional = logits.chunk(2)
            logits = conditional if self.cfg_no_text else cfg_mix(conditional, unconditional, self.options.cfg_coef)
        logits = logits.float()
        if self.hooks.text_logits is not None:
            logits = self.hooks.text_logits(logits, info)
        text = sample_token(logits, self.options.text_temp, self.options.text_top_k, self.generator)
        if self.hooks.text_token is not None:
            text = self.hooks.text_token(text, info)
        return logits, text

    def _sample_audio(self, text: Tensor, hidden: Tensor, state: StreamState, info: StepInfo,
                      replace_audio: Tensor | None, audio_needed: int | None = None) -> Tensor | None:
        if self.num_generated == 0:
            return None
        if replace_audio is not None:
            audio = replace_audio.reshape(state.batch_size, self.num_generated).to(torch.long)
        else:
            needed = self.num_generated if audio_needed is None else max(0, min(audio_needed, self.num_generated))
            audio = self._depformer(text, hidden, state, needed)
        if self.hooks.audio_tokens is not None:
            audio = self.hooks.audio_tokens(audio, info)
        return audio

    def _depformer(self, text: Tensor, hidden: Tensor, state: StreamState, needed: int) -> Tensor:
        """Sample the first ``needed`` of the ``G`` generated codebooks ``[B, G]``, each conditioned on the previous
        one; the others are -1 (their random draws are made: see :meth:`step`)."""
        depformer, dstate, opts = self.lm.depformer, state.depformer, self.options
        assert depformer is not None and dstate is not None
        dstate.restart()
        frame = depformer.sample_frame(state.model_rows(text), hidden, dstate, needed, opts.temp, opts.top_k,
                                       opts.cfg_coef if opts.uses_cfg else 1.0, self.generator)
        if frame is not None:  # all the sub-steps in one native call, same draws
            state.audio[:, :needed] = frame
        previous = text
        for k in range(0 if frame is not None else needed):
            logits = depformer.logits(k, state.model_rows(previous), hidden, dstate)
            if opts.uses_cfg:
                conditional, unconditional = logits.chunk(2)
                logits = cfg_mix(conditional, unconditional, opts.cfg_coef)
            state.audio[:, k] = sample_token(logits.float(), opts.temp, opts.top_k, self.generator)
            previous = state.audio[:, k]
        if needed < self.num_generated:
            state.audio[:, needed:] = ZERO_TOKEN_ID
            self._skip_draws(state.batch_size, self.num_generated - needed)
        return state.audio.clone()

    def _skip_draws(self, batch: int, count: int) -> None:
        """Advance the random generator as ``count`` audio samplings of ``batch`` rows would (see
        :func:`~dsmcli.engine.sampling.sample_token`: one exponential draw per top-k candidate)."""
        opts = self.options
        if opts.temp <= 0:
            return
        card = self.lm.config.card
        width = min(opts.top_k, card) if opts.top_k > 0 else card
        device = self.lm.device
        for _ in range(count):
            torch.empty(batch, width, device=device).exponential_(1, generator=self.generator)

    def _advance(self, state: StreamState, text: Tensor, audio: Tensor | None, active: Tensor) -> None:
        state.offsets = state.offsets + active.long()
        cells = (state.offsets % self.ring_size)[:, None, None]
        mask = active[:, None, None]
        _masked_scatter(state.tokens[:, :1], cells, text[:, None, None], mask)
        if audio is not None:
            generated = state.tokens[:, 1 : self.num_generated + 1]
            _masked_scatter(generated, cells.expand(-1, self.num_generated, 1), audio[:, :, None], mask)

    def _frame(self, state: StreamState, active: Tensor) -> tuple[Tensor, Tensor]:
        max_delay = self.ring_size - 2
        delays = self.delays[: self.num_generated + 1, None]
        cells = (state.offsets[:, None, None] - max_delay + delays) % self.ring_size
        frame = state.tokens.gather(2, cells)[:, :, 0]
        valid = (state.offsets > max_delay) & active
        return torch.where(valid[:, None], frame, UNGENERATED_TOKEN_ID), valid
