"""The TTS step over independent batch slots (FORMAT.md §6.3-6.8): the one place that runs ``dsm speak`` / ``dsm
dialog``, the server's streams, the generator API and ``dsm bench``'s TTS path (driven by
:class:`~dsmcli.engine.scheduler.SlotScheduler`).

A stream that gets a slot gives its voice and entry feed (words and pauses, all known or arriving); its LM, Mimi
and text-machine state are reset and its voice set with ``set_condition`` (the other slots are untouched).
Per step, for the slots whose next step is decidable with the text known so far:

1. the LM samples a text token; the text-stream state machine rewrites it (word tokens, padding, lookahead);
2. the depformer samples the audio codebooks (skipped while every stepping slot is inside the audio delay);
   audio is forced to -1 before each codebook's delay + the audio delay, and an audio prefix overrides it;
3. once a slot's time-aligned frame is past the audio delay, Mimi decodes it: an :class:`AudioChunk` of 1920
   samples goes to the stream (the first ``P`` decoded frames of a P-step audio prefix are dropped, as the
   reference does);
4. a word becomes final (start, end) as soon as the next entry is consumed or the text has ended.

A slot ends ``delay_steps + final_padding`` steps after the model asked for a word past the last one: the
audio is then ``end_step + final_padding - max(delays) - P`` frames long, exactly the reference's
``TTSModel.generate`` + streaming Mimi decode of ``frames[delay_steps:]``. Word times are
``(consumption step - P) / 12.5`` s, relative to the start of the written audio.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dsmcli.engine import EngineOptions, LMStream, PreparedCondition, StepHooks, StepInfo, StreamState
from dsmcli.engine.scheduler import SlotStream, StepReport
from dsmcli.engine.stream import NOT_MASKED, StepOutput
from dsmcli.errors import DsmError, InputError
from dsmcli.results import Word
from dsmcli.tts.model import SpeakOptions, TtsModel
from dsmcli.tts.slot_voice import SlotVoice
from dsmcli.tts.state_machine import SlotState, TextStreamBatch, TextStreamMachine
from dsmcli.tts.text_feed import EntryFeed
from dsmcli.tts.tokens import UNGENERATED_TOKEN, ZERO_TOKEN

CLIP = 1.0  # decoded PCM is clipped to [-1, 1]


@dataclass(frozen=True)
class AudioChunk:
    """One 80 ms frame of generated speech: ``pcm`` ``[FRAME_SIZE]`` float32 in [-1, 1], 24 kHz mono."""

    pcm: np.ndarray


@dataclass(frozen=True)
class TokenFrame:
    """The time-aligned ``[text, audio_1 .. audio_G]`` tokens of the next frame, from time 0 (for a stream with
    ``wants_frames``: tests, debugging)."""

    tokens: Tensor


@dataclass(frozen=True)
class SpeechResult:
    """One finished input. ``frames``: 80 ms frames of audio written; ``end_step``: the step at which the model
    asked for a word past the last one (None if ``max_steps`` cut it: ``truncated``); ``consumption_steps``: the
    step at which each entry (word or pause) was consumed; ``prefix_frames``: audio-prefix steps (not written)."""

    name: str
    frames: int
    seconds: float
    steps: int
    end_step: int | None
    consumption_steps: tuple[int, ...]
    words: tuple[Word, ...]
    prefix_frames: int
    truncated: bool


class TtsStream(SlotStream):
    """A stream on a TTS slot: :meth:`open` gives its voice and text when it gets a slot. Its events are
    :class:`AudioChunk`, :class:`~dsmcli.results.Word` (and :class:`TokenFrame` with ``wants_frames``); it
    finishes with a :class:`SpeechResult`. ``reseed``: when it starts alone on the model, the sampling seed is
    set again (a lone stream replays ``dsm speak --seed``)."""

    name = "stream"
    wants_frames = False
    reseed = False

    def open(self, model: TtsModel, options: SpeakOptions) -> tuple[SlotVoice, EntryFeed]:
        """The stream's voice and entry feed. DsmError when its input cannot be opened (this stream fails)."""
        raise NotImplementedError


@dataclass
class _Slot:
    stream: TtsStream
    voice: SlotVoice
    feed: EntryFeed
    text_closed: bool = False
    decoded: int = 0  # frames Mimi decoded (prefix included)
    written: int = 0  # frames given to the stream
    word_cursor: int = 0
    words: list[Word] = field(default_factory=list)


class TtsBatch:
    """``batch_size`` TTS slots of one model (a :class:`~dsmcli.engine.scheduler.SlotBatch`; see the module
    docstring)."""

    def __init__(self, model: TtsModel, options: SpeakOptions = SpeakOptions(), batch_size: int = 1):
        self.model, self.options, self.batch_size = model, options, batch_size
        config, device = model.config, model.lm.device
        self.text = TextStreamBatch.create(TextStreamMachine(model.text_stream_config(options)), batch_size)
        generator = None if options.seed is None else torch.Generator(device=device).manual_seed(options.seed)
        hooks = StepHooks(text_logits=self._bonus if options.padding_bonus else None, text_token=self._on_text,
                          audio_tokens=self._on_audio)
        self.stream = LMStream(model.lm, model.sampling(options), hooks=hooks, cfg_no_text=True,
                               num_generated=model.n_q, generator=generator,
                               engine=EngineOptions(kernels=model.kernels))
        delays = torch.tensor(config.delays[1 : model.n_q + 1], dtype=torch.long, device=device)
        self.audio_start = delays + model.delay_steps  # [G] first step whose audio token is real
        self.skip_audio = torch.full((batch_size, model.n_q), ZERO_TOKEN, dtype=torch.long, device=device)
        self.prefix = torch.full((batch_size, model.n_q, 1), UNGENERATED_TOKEN, dtype=torch.long, device=device)
        self.tail_steps = model.delay_steps + options.final_padding
        self.max_delay = config.max_delay
        self.lm_state: StreamState | None = None  # created with the first streams' conditions
        self.mimi_state = model.mimi.init_state(batch_size)
        self.slots: list[_Slot | None] = [None] * batch_size

    # ------------------------------------------------------------------------------------ hooks
    def _bonus(self, logits: Tensor, info: StepInfo) -> Tensor:
        logits[:, self.model.token_ids.pad] += self.options.padding_bonus
        return logits

    def _on_text(self, tokens: Tensor, info: StepInfo) -> Tensor:
        return self.text.process(tokens, info.active)

    def _on_audio(self, audio: Tensor, info: StepInfo) -> Tensor:
        """``[B, G]``: -1 before each codebook's delay + the audio delay, then the audio prefix where it has codes."""
        offsets = info.offsets[:, None]  # [B, 1]
        audio = torch.where(offsets < self.audio_start, ZERO_TOKEN, audio)
        length = self.prefix.shape[-1]
        cells = offsets.clamp(max=length - 1)[:, :, None].expand(-1, audio.shape[1], 1)
        codes = self.prefix.gather(2, cells)[:, :, 0]
        return torch.where((offsets < length) & (codes != UNGENERATED_TOKEN), codes, audio)

    # ------------------------------------------------------------------------------------ slots
    def open(self, index: int, stream: TtsStream) -> bool:
        """Open ``stream``'s voice and text for slot ``index``; False (the stream failed) when it cannot."""
        try:
            voice, feed = stream.open(self.model, self.options)
        except DsmError as error:
            stream.fail(error)
            return False
        self.slots[index] = _Slot(stream, voice, feed)
        return True

    def start(self, fresh: dict[int, Any]) -> list[int]:
        """Reset the ``fresh`` (opened) slots together; returns those dropped (see :meth:`_reset`)."""
        self._reseed(fresh)
        return self._reset(list(fresh))

    def _reseed(self, fresh: dict[int, Any]) -> None:
        generator = self.stream.generator
        if generator is None or self.options.seed is None or not any(s.reseed for s in fresh.values()):
            return
        if all(slot is None for index, slot in enumerate(self.slots) if index not in fresh):
            generator.manual_seed(self.options.seed)

    def _reset(self, fresh: list[int]) -> list[int]:
        """Reset the LM, Mimi and text state of the ``fresh`` slots and install their voices; returns the slots
        dropped (a voice of another length than those in use)."""
        device = self.model.lm.device
        mask = torch.zeros(self.batch_size, dtype=torch.bool, device=device)
        mask[fresh] = True
        voices = [slot.voice if slot is not None else self.slots[fresh[0]].voice for slot in self.slots]  # type: ignore
        condition = self._conditions(voices, fresh if self.lm_state is not None else range(self.batch_size))
        masked = [self._masked_until(v) for v in voices]
        if self.lm_state is None:
            self.lm_state = self.stream.init_state(self.batch_size, condition, cfg_masked_until=masked)
        else:
            if condition is not None:
                try:
                    self.stream.set_condition(self.lm_state, condition, mask)
                except ValueError:  # a voice of another length than those in use: cross-attention keeps its size
                    for index in fresh:
                        self._drop(index, InputError(f"voice {voices[index].name} does not have the length "
                                                     f"of the voices already in use: run it separately"))
                    return fresh
            self.lm_state.reset(mask)
            self.lm_state.cfg_masked_until[mask] = torch.tensor(masked, device=device)[mask]
        self.mimi_state.reset(mask)
        for index in fresh:
            voice = voices[index]
            self._set_prefix(index, voice.prefix)
            self.text.reset(index, text_closed=False, prefix_steps=voice.prefix_frames)
        return []

    def _conditions(self, voices: list[SlotVoice], fresh: Iterable[int]) -> list[PreparedCondition | None] | None:
        """The prepared conditions of the ``fresh`` slots (None elsewhere): each voice's own projection when it
        was made for this batch's stream, else projected here, once per voice (None: the model takes none)."""
        if any(voice.condition is None for voice in voices):
            return None
        made: dict[int, PreparedCondition | None] = {}
        out: list[PreparedCondition | None] = [None] * len(voices)
        for index in fresh:
            voice = voices[index]
            if id(voice) not in made:
                made[id(voice)] = voice.prepared(self.stream)
            out[index] = made[id(voice)]
        return out

    def _masked_until(self, voice: SlotVoice) -> int:
        """Real CFG: the unconditional rows do not see the audio prefix (reference ``cfg_is_no_prefix``)."""
        return voice.prefix_frames + self.model.delay_steps if voice.prefix is not None else NOT_MASKED

    def _set_prefix(self, index: int, prefix: Tensor | None) -> None:
        """Slot ``index``'s audio prefix, each codebook shifted by its delay + the audio delay (-2 elsewhere)."""
        self.prefix[index] = UNGENERATED_TOKEN
        if prefix is None:
            return
        codes = prefix[1 : self.model.n_q + 1].to(self.prefix.device)  # [G, P]
        starts = self.audio_start.tolist()
        needed = max(starts) + codes.shape[1]
        if needed > self.prefix.shape[-1]:
            grow = needed - self.prefix.shape[-1]
            self.prefix = torch.nn.functional.pad(self.prefix, (0, grow), value=UNGENERATED_TOKEN)
        for q, start in enumerate(starts):
            self.prefix[index, q, start : start + codes.shape[1]] = codes[q]

    def stop(self, index: int) -> None:
        if self.slots[index] is not None:
            self.slots[index] = None
            self.text.release(index)

    def wait(self, timeout: float) -> bool:
        """Wait on the first slot still waiting for text (a pipe waits itself; pushed text wakes the scheduler)."""
        for slot in self.slots:
            if slot is not None and not slot.text_closed:
                return slot.feed.wait(timeout)
        return False

    # ------------------------------------------------------------------------------------- step
    def step(self) -> StepReport:
        """New text in, finished slots out, then one batched step of the slots that can step."""
        before = [slot is not None for slot in self.slots]
        self._pull_text()
        self._finish_done()
        ready = self.text.ready()
        stepped = bool(ready.any())
        if stepped:
            self._step(ready)
        return StepReport(stepped, [i for i, was in enumerate(before) if was and self.slots[i] is None])

    def _pull_text(self) -> None:
        """Move newly arrived entries into the text machine (non-blocking)."""
        for index, slot in enumerate(self.slots):
            if slot is None or slot.text_closed:
                continue
            try:
                entries, closed = slot.feed.poll()
            except DsmError as error:
                self._drop(index, error)
                continue
            self.text.append_entries(index, entries)
            if closed:
                self.text.close_text(index)
                slot.text_closed = True

    def _audio_needed(self, offsets: Tensor, active: Tensor) -> int:
        """Leading codebooks whose tokens some stepping slot keeps: the others are forced to -1 this step (before
        their delay + the audio delay), so the depformer need not compute them."""
        stepping = offsets[active]
        if stepping.numel() == 0:
            return 0
        reached = (self.audio_start <= stepping.max()).nonzero()
        return int(reached.max()) + 1 if reached.numel() else 0

    def _step(self, ready: Tensor) -> None:
        assert self.lm_state is not None
        active = ready.to(self.model.lm.device)
        offsets = self.lm_state.offsets
        early = bool((offsets[active] < self.model.delay_steps).all())
        out = self.stream.step(None, self.lm_state, active=active, replace_audio=self.skip_audio if early else None,
                               audio_needed=self._audio_needed(offsets, active))
        times = self.lm_state.offsets - 1 - self.max_delay  # [B] time of the frame just completed
        decode = out.frame_valid & (times >= self.model.delay_steps)
        pcm = self._decode(out.frame, decode) if bool(decode.any()) else None
        valid, decode_list = out.frame_valid.tolist(), decode.tolist()
        for index, slot in enumerate(self.slots):
            if slot is None or not bool(ready[index]):
                continue
            try:
                self._deliver(index, slot, out, valid[index], pcm if decode_list[index] else None)
            except DsmError as error:
                self._drop(index, error)
            else:
                if self.text.slots[index].step >= self.options.max_steps:
                    self._finish(index)

    def _deliver(self, index: int, slot: _Slot, out: StepOutput, valid: bool, pcm: np.ndarray | None) -> None:
        """Slot ``index``'s outputs of this step: its token frame, its audio, its words made final."""
        if valid and slot.stream.wants_frames:
            slot.stream.emit(TokenFrame(out.frame[index].cpu()))
        if pcm is not None:
            slot.decoded += 1
            if slot.decoded > slot.voice.prefix_frames:
                slot.written += 1
                slot.stream.emit(AudioChunk(pcm[index]))
        self._emit_words(index, slot)

    def _decode(self, frame: Tensor, decode: Tensor) -> np.ndarray:
        """Mimi-decode the audio of the slots in ``decode`` ``[B]`` -> ``[B, FRAME_SIZE]`` float32 (clipped)."""
        codes = frame[:, 1:, None].clamp(min=0)  # [B, G, 1]; rows not decoded are ignored
        active = None if bool(decode.all()) else decode
        pcm = self.model.mimi.decode_step(codes, self.mimi_state, active=active)  # [B, 1, FRAME_SIZE]
        return pcm[:, 0].clamp(-CLIP, CLIP).float().cpu().numpy()

    # ------------------------------------------------------------------------------------ words
    def _time(self, step: int, slot: _Slot) -> float:
        return float(Fraction(step - slot.voice.prefix_frames) / self.model.frame_rate)

    def _emit_words(self, index: int, slot: _Slot, final: bool = False) -> None:
        """Give the stream every word whose end is now known (the next consumption, or the end of the text)."""
        state: SlotState = self.text.slots[index]
        times = state.consumption_times
        while slot.word_cursor < len(state.transcript):
            timed = state.transcript[slot.word_cursor]
            after = bisect.bisect_right(times, timed.step)
            if after < len(times):
                end = times[after]
            elif state.end_step is not None or final:
                end = state.end_step if state.end_step is not None else state.step
            else:
                return
            word = Word(" " + timed.text, self._time(timed.step, slot), self._time(end, slot))
            slot.words.append(word)
            slot.word_cursor += 1
            slot.stream.emit(word)

    # ------------------------------------------------------------------------------------- ends
    def _finish_done(self) -> None:
        done = self.text.finished(self.tail_steps).tolist()
        for index, slot in enumerate(self.slots):
            if slot is not None and done[index]:
                self._finish(index)

    def _finish(self, index: int) -> None:
        slot = self.slots[index]
        assert slot is not None
        state = self.text.slots[index]
        self.slots[index] = None
        self.text.release(index)
        try:
            self._emit_words(index, slot, final=True)
            result = SpeechResult(
                name=slot.stream.name, frames=slot.written, seconds=float(slot.written / self.model.frame_rate),
                steps=state.step, end_step=state.end_step, consumption_steps=tuple(state.consumption_times),
                words=tuple(slot.words), prefix_frames=slot.voice.prefix_frames, truncated=state.end_step is None)
            slot.stream.finish(result)
        except DsmError as error:
            slot.stream.fail(error)

    def _drop(self, index: int, error: DsmError) -> None:
        slot = self.slots[index]
        assert slot is not None
        self.slots[index] = None
        self.text.release(index)
        slot.stream.fail(error)

