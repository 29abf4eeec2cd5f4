"""Streaming speech-to-text over independent batch slots.

Every input is a stream of audio chunks; B inputs step together, one 80 ms step at a time, and a slot
that finishes is given the next input (its Mimi and LM state reset, the others untouched). Per step and
slot: encode the next frame (silence prefix, audio, silence suffix), give the LM the codes of the
*previous* frame (training alignment), turn the sampled text token into final words (``WordAssembler``)
and end-of-turn events (semantic VAD heads), and hand them to the input's sink as they happen. An optional
prompt (``dsmcli.stt.prompt``, experimental) adds audio before each input and forces text at its start.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
import torch

from dsmcli.audio import FrameChunker
from dsmcli.constants import FRAME_RATE, FRAME_SIZE
from dsmcli.engine import LMStream, SamplingOptions, StepOutput
from dsmcli.errors import DsmError, OptionError, UsageError
from dsmcli.results import EndOfTurn, TranscriptEvent
from dsmcli.stt import END_OF_TURN_CLASS, END_OF_TURN_HEAD, SttModel
from dsmcli.stt.prompt import PromptRun, SttPrompt
from dsmcli.stt.words import WordAssembler

DEFAULT_TEXT_TOP_K = 50  # lm_gen_config of the released STT models (used when temperature > 0)


@dataclass(frozen=True)
class TranscribeOptions:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = DEFAULT_TEXT_TOP_K
    vad: bool = False  # emit EndOfTurn events from the semantic VAD heads
    vad_threshold: float = 0.5
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise OptionError("temperature", f"must be >= 0, got {self.temperature}")
        if not 0 < self.vad_threshold < 1:
            raise OptionError("vad_threshold", f"must be between 0 and 1, got {self.vad_threshold}")


class TranscriptSink(Protocol):
    """Receives one input's results, in order."""

    def event(self, event: TranscriptEvent) -> None: ...

    def finish(self, duration: float) -> None: ...

    def fail(self, error: DsmError) -> None: ...


@dataclass
class SttJob:
    """One input: ``open()`` gives its audio chunks (float32 mono at 24 kHz), opened when a slot is free."""

    name: str
    open: Callable[[], Iterable[np.ndarray]]
    sink: TranscriptSink


class FrameFeed:
    """The frames of one input in DSM order: ``prefix`` silent frames, the ``lead`` frames ``[n, FRAME_SIZE]``
    (a prompt's audio and gap), the audio, ``suffix`` silent frames."""

    def __init__(self, chunks: Iterable[np.ndarray], prefix: int, suffix: int, lead: np.ndarray | None = None) -> None:
        self._chunks: Iterator[np.ndarray] | None = iter(chunks)
        self._chunker = FrameChunker(FRAME_SIZE)
        self._ready: deque[np.ndarray] = deque(np.zeros((prefix, FRAME_SIZE), dtype=np.float32))
        if lead is not None:
            self._ready.extend(lead)
        self._suffix = suffix
        self.audio_samples = 0

    def next_frame(self) -> np.ndarray | None:
        """The next ``[FRAME_SIZE]`` frame, or None when the stream is over. May block on a live source."""
        while not self._ready and self._chunks is not None:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._chunks = None
                self._ready.extend(self._chunker.flush())
                self._ready.extend(np.zeros((self._suffix, FRAME_SIZE), dtype=np.float32))
            else:
                self.audio_samples += len(chunk)
                self._ready.extend(self._chunker.push(chunk))
        return self._ready.popleft() if self._ready else None


class InputEvents:
    """One input's decoded stream → its events in order: words as they become final, ends of turn.

    ``push`` takes a step's text token (and its probability) and, with VAD, the end-of-turn probability.
    An end of turn fires when that probability passes ``vad_threshold`` and text came since the last
    one. ``WordAssembler`` only emits a word at the next word boundary, so an end of turn detected while
    the turn's last word is still open is held back until that word is out (or the stream ends): the
    words before it stay in the turn, and segmenting at the end of turn cuts in the right place. Its
    ``time`` stays the step where the VAD fired.
    """

    def __init__(self, words: WordAssembler, time_offset: Fraction, vad_threshold: float | None) -> None:
        self.words = words
        self.time_offset = time_offset
        self.vad_threshold = vad_threshold
        self.turn_open = False  # text came since the last end of turn
        self.held: EndOfTurn | None = None  # detected, waiting for the turn's last word

    def push(self, step: int, token: int, probability: float | None,
             end_of_turn: float | None = None, logprob: float | None = None) -> list[TranscriptEvent]:
        """Events made final by ``step``: its words, then a (released or new) end of turn."""
        events: list[TranscriptEvent] = list(self.words.push(step, token, probability, logprob))
        if self.held is not None:
            if not self.words.has_pending_text:  # the held turn's words are out: they belong to it
                events.append(self.held)
                self.held = None
        elif events or self.words.has_pending_text:
            self.turn_open = True
        if end_of_turn is not None and self._ends_turn(end_of_turn):
            self.turn_open = False
            turn = EndOfTurn(time=self._time(step), probability=end_of_turn)
            if self.words.has_pending_text:
                self.held = turn
            else:
                events.append(turn)
        return events

    def finish(self, last_step: int) -> list[TranscriptEvent]:
        """The last words (and a held end of turn) at the end of the stream."""
        events: list[TranscriptEvent] = list(self.words.finish(last_step))
        if self.held is not None:
            events.append(self.held)
            self.held = None
        return events

    def _ends_turn(self, probability: float) -> bool:
        if self.vad_threshold is None:
            return False
        return self.turn_open and self.held is None and probability > self.vad_threshold

    def _time(self, step: int) -> float:
        return float(max(Fraction(0), Fraction(step) / FRAME_RATE - self.time_offset))


@dataclass
class _Slot:
    job: SttJob
    feed: FrameFeed
    events: InputEvents
    mimi: Any  # MimiState of batch 1 (see Transcriber._encode_next)
    step: int = 0


@dataclass(frozen=True)
class _StepValues:
    """One step's outputs on the host (one transfer): per slot token, its probability and log-probability,
    end-of-turn prob."""

    tokens: list[int]
    probabilities: list[float]
    end_of_turn: list[float] | None
    logprobs: list[float] | None = None

    @classmethod
    def read(cls, out: StepOutput, vad: bool) -> _StepValues:
        """``out.text_tokens [B]``, ``out.text_logits [B, card]``, ``out.extra_probs [B, heads, classes]``."""
        probabilities = torch.softmax(out.text_logits, dim=-1).gather(1, out.text_tokens[:, None])[:, 0]
        logprobs = torch.log_softmax(out.text_logits.float(), dim=-1).gather(1, out.text_tokens[:, None])[:, 0]
        rows = [out.text_tokens.double(), probabilities.double(), logprobs.double()]
        if vad and out.extra_probs is not None:
            rows.append(out.extra_probs[:, END_OF_TURN_HEAD, END_OF_TURN_CLASS].double())
        values = torch.stack(rows).tolist()
        return cls([int(t) for t in values[0]], values[1], values[3] if len(values) > 3 else None, values[2])


class Transcriber:
    """Runs jobs through ``batch_size`` slots of one model."""

    def __init__(self, model: SttModel, options: TranscribeOptions = TranscribeOptions(), batch_size: int = 1,
                 prompt: SttPrompt | None = None):
        if options.vad and not model.has_end_of_turn:
            raise OptionError("vad", f": {model.name} has no end-of-turn (VAD) heads; use stt-1b-en_fr-candle")
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        self.model, self.options, self.batch_size = model, options, batch_size
        generator = None
        if options.seed is not None:
            generator = torch.Generator(device=model.lm.device).manual_seed(options.seed)
        sampling = SamplingOptions(temp=0.0, top_k=0, text_temp=options.temperature, text_top_k=options.top_k)
        self.prompt = None if prompt is None else PromptRun(
            prompt, model.tokenizer, model.timing.time_offset, batch_size,
            end_of_padding_id=model.config.end_of_padding_id, pad_id=model.config.text_pad_id)
        hooks = None if self.prompt is None else self.prompt.forcing.hooks
        self.stream = LMStream(model.lm, sampling, hooks=hooks, generator=generator)

    def run(self, jobs: Iterable[SttJob], progress: Callable[[str, int], None] | None = None,
            on_token: Callable[[SttJob, int, int], None] | None = None) -> None:
        """Transcribe every job; each job's sink gets its events as soon as they are final.

        ``progress(name, samples_read)`` is called every step per input; ``on_token(job, step, token)``
        observes the raw text tokens (tests, debugging). A job whose input or output fails is handed to
        its sink's ``fail`` and its slot goes to the next job."""
        pending, B = deque(jobs), self.batch_size
        device = self.model.lm.device
        lm_state = self.stream.init_state(B)
        slots: list[_Slot | None] = [None] * B
        prev_codes = torch.zeros(B, self.model.config.n_q, 1, dtype=torch.long, device=device)
        next_codes = torch.zeros_like(prev_codes)
        while True:
            fresh = self._fill(slots, pending)
            if fresh.any():
                lm_state.reset(torch.from_numpy(fresh).to(device))
            busy = np.array([s is not None for s in slots])
            if not busy.any():
                return
            encoded = self._encode_next(slots, next_codes)
            out = self.stream.step(prev_codes, lm_state, active=torch.from_numpy(busy).to(device))
            prev_codes, next_codes = next_codes, prev_codes  # the LM sees frame t-1's codes at step t
            values = _StepValues.read(out, self.options.vad)
            for i, slot in enumerate(slots):
                if slot is not None and not self._emit(slot, i, values, bool(encoded[i]), progress, on_token):
                    slots[i] = None

    def _fill(self, slots: list[_Slot | None], pending: deque[SttJob]) -> np.ndarray:
        fresh = np.zeros(len(slots), dtype=bool)
        timing = self.model.timing
        for i, slot in enumerate(slots):
            while slot is None and pending:
                job = pending.popleft()
                lead = None if self.prompt is None else self.prompt.lead
                try:
                    feed = FrameFeed(job.open(), timing.prefix_frames, timing.suffix_frames, lead)
                except DsmError as error:
                    job.sink.fail(error)
                    continue
                slot = slots[i] = _Slot(job, feed, self._input_events(), self.model.mimi.init_state(1))
                fresh[i] = True
                if self.prompt is not None:
                    self.prompt.start(i)
        return fresh

    def _input_events(self) -> InputEvents:
        cfg, offset = self.model.config, self.model.timing.time_offset
        if self.prompt is not None:
            offset = self.prompt.time_offset
        words = WordAssembler(self.model.tokenizer, end_of_padding_id=cfg.end_of_padding_id, pad_id=cfg.text_pad_id,
                              eos_id=self.model.eos_id, time_offset_seconds=offset)
        return InputEvents(words, offset, self.options.vad_threshold if self.options.vad else None)

    def _encode_next(self, slots: list[_Slot | None], codes: torch.Tensor) -> np.ndarray:
        """Encode each busy slot's next frame into ``codes[i]`` (kept for the LM's next step, as trained);
        True where a slot had a frame. Mimi runs per slot (batch 1): residual quantization turns the
        ULP-level differences of batch-size-dependent kernels into different codes at near-ties, and a
        file's transcript must not depend on what it is batched with."""
        encoded = np.zeros(len(slots), dtype=bool)
        device = codes.device
        for i, slot in enumerate(slots):
            if slot is None:
                continue
            try:
                frame = slot.feed.next_frame()
            except DsmError as error:
                slot.job.sink.fail(error)
                slots[i] = None
                continue
            if frame is not None:
                wav = torch.from_numpy(frame).to(device)[None, None]  # [1, 1, FRAME_SIZE]
                codes[i] = self.model.mimi.encode_step(wav, slot.mimi)[0]  # [n_q, 1]
                encoded[i] = True
        return encoded

    def _emit(self, slot: _Slot, i: int, values: _StepValues, encoded: bool,
              progress: Callable[[str, int], None] | None, on_token: Callable[[SttJob, int, int], None] | None) -> bool:
        """Hand slot ``i``'s events of this step to its sink; False when the slot is free again
        (its input is done, or its output failed)."""
        token = values.tokens[i]
        if on_token is not None:
            on_token(slot.job, slot.step, token)
        if self.prompt is not None:
            token = self.prompt.visible(i, slot.step, token)
        end_of_turn = None if values.end_of_turn is None else values.end_of_turn[i]
        logprob = None if values.logprobs is None else values.logprobs[i]
        events = slot.events.push(slot.step, token, values.probabilities[i], end_of_turn, logprob)
        if not encoded:  # the LM just consumed the input's last frame
            events += slot.events.finish(slot.step)
        slot.step += 1
        if progress is not None:
            progress(slot.job.name, slot.feed.audio_samples)
        sink = slot.job.sink
        try:
            for event in events:
                sink.event(event)
            if not encoded:
                sink.finish(slot.feed.audio_samples / self.model.mimi.sample_rate)
        except DsmError as error:  # its output cannot be written: drop this input, keep the others
            sink.fail(error)
            return False
        return encoded
