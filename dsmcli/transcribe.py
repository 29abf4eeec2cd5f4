"""Streaming speech-to-text over independent batch slots.

Every input is a stream of audio chunks; B inputs step together, one 80 ms step at a time, and a slot
that finishes is given the next input (its Mimi and LM state reset, the others untouched). Per step and
slot: encode the next frame (silence prefix, audio, silence suffix), give the LM the codes of the
*previous* frame (training alignment), turn the sampled text token into final words (``WordAssembler``)
and end-of-turn events (semantic VAD heads), and hand them to the input's sink as they happen.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch

from dsmcli.audio import FrameChunker
from dsmcli.constants import FRAME_RATE, FRAME_SIZE
from dsmcli.engine import LMStream, SamplingOptions
from dsmcli.errors import DsmError, UsageError
from dsmcli.results import EndOfTurn, TranscriptEvent
from dsmcli.stt import END_OF_TURN_CLASS, END_OF_TURN_HEAD, SttModel
from dsmcli.words import WordAssembler

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
            raise UsageError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.vad_threshold < 1:
            raise UsageError(f"--vad-threshold must be between 0 and 1, got {self.vad_threshold}")


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
    """The frames of one input in DSM order: ``prefix`` silent frames, the audio, ``suffix`` silent frames."""

    def __init__(self, chunks: Iterable[np.ndarray], prefix: int, suffix: int) -> None:
        self._chunks: Iterator[np.ndarray] | None = iter(chunks)
        self._chunker = FrameChunker(FRAME_SIZE)
        self._ready: deque[np.ndarray] = deque(np.zeros((prefix, FRAME_SIZE), dtype=np.float32))
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


@dataclass
class _Slot:
    job: SttJob
    feed: FrameFeed
    words: WordAssembler
    mimi: Any  # MimiState of batch 1 (see Transcriber._encode_next)
    step: int = 0
    turn_open: bool = False  # a word came since the last end of turn
    events: list[TranscriptEvent] = field(default_factory=list)


class Transcriber:
    """Runs jobs through ``batch_size`` slots of one model."""

    def __init__(self, model: SttModel, options: TranscribeOptions = TranscribeOptions(), batch_size: int = 1):
        if options.vad and not model.has_end_of_turn:
            raise UsageError(f"{model.name} has no end-of-turn (VAD) heads; use stt-1b-en_fr-candle")
        self.model, self.options, self.batch_size = model, options, batch_size
        generator = None
        if options.seed is not None:
            generator = torch.Generator(device=model.lm.device).manual_seed(options.seed)
        sampling = SamplingOptions(temp=0.0, top_k=0, text_temp=options.temperature, text_top_k=options.top_k)
        self.stream = LMStream(model.lm, sampling, generator=generator)

    def run(self, jobs: Iterable[SttJob], progress: Callable[[str, int], None] | None = None,
            on_token: Callable[[SttJob, int, int], None] | None = None) -> None:
        """Transcribe every job; each job's sink gets its events as soon as they are final.

        ``progress(name, samples_read)`` is called every step per input; ``on_token(job, step, token)``
        observes the raw text tokens (tests, debugging)."""
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
            encode = self._encode_next(slots, next_codes)
            out = self.stream.step(prev_codes, lm_state, active=torch.from_numpy(busy).to(device))
            prev_codes, next_codes = next_codes, prev_codes  # the LM sees frame t-1's codes at step t
            self._emit(slots, out, encode, progress, on_token)

    def _fill(self, slots: list[_Slot | None], pending: deque[SttJob]) -> np.ndarray:
        fresh = np.zeros(len(slots), dtype=bool)
        for i, slot in enumerate(slots):
            while slot is None and pending:
                job = pending.popleft()
                try:
                    feed = FrameFeed(job.open(), self.model.timing.prefix_frames, self.model.timing.suffix_frames)
                except DsmError as error:
                    job.sink.fail(error)
                    continue
                slot = slots[i] = _Slot(job, feed, self._assembler(), self.model.mimi.init_state(1))
                fresh[i] = True
        return fresh

    def _assembler(self) -> WordAssembler:
        cfg = self.model.config
        return WordAssembler(self.model.tokenizer, end_of_padding_id=cfg.end_of_padding_id, pad_id=cfg.text_pad_id,
                             eos_id=self.model.eos_id, time_offset_seconds=self.model.timing.time_offset)

    def _encode_next(self, slots: list[_Slot | None], codes: torch.Tensor) -> np.ndarray:
        """Encode each busy slot's next frame into ``codes[i]`` (kept for the LM's next step, as trained);
        True where a slot had a frame. Mimi runs per slot (batch 1): residual quantization turns the
        ULP-level differences of batch-size-dependent kernels into different codes at near-ties, and a
        file's transcript must not depend on what it is batched with."""
        encode = np.zeros(len(slots), dtype=bool)
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
                wav = torch.from_numpy(frame).to(device)[None, None]
                codes[i] = self.model.mimi.encode_step(wav, slot.mimi)[0]
                encode[i] = True
        return encode

    def _emit(self, slots: list[_Slot | None], out, encode: np.ndarray, progress, on_token) -> None:
        tokens = out.text_tokens.tolist()
        probs = torch.softmax(out.text_logits, dim=-1).gather(1, out.text_tokens[:, None])[:, 0].tolist()
        eot = None
        if self.options.vad and out.extra_probs is not None:
            eot = out.extra_probs[:, END_OF_TURN_HEAD, END_OF_TURN_CLASS].tolist()
        for i, slot in enumerate(slots):
            if slot is None:
                continue
            if on_token is not None:
                on_token(slot.job, slot.step, tokens[i])
            events: list[TranscriptEvent] = list(slot.words.push(slot.step, tokens[i], probs[i]))
            if events:
                slot.turn_open = True
            if eot is not None and slot.turn_open and eot[i] > self.options.vad_threshold:
                slot.turn_open = False
                events.append(EndOfTurn(time=self._time(slot.step), probability=eot[i]))
            for event in events:
                slot.job.sink.event(event)
            if progress is not None:
                progress(slot.job.name, slot.feed.audio_samples)
            slot.step += 1
            if not encode[i]:  # the LM just consumed the last frame
                for event in slot.words.finish(slot.step - 1):
                    slot.job.sink.event(event)
                slot.job.sink.finish(slot.feed.audio_samples / self.model.mimi.sample_rate)
                slots[i] = None

    def _time(self, step: int) -> float:
        return float(max(Fraction(0), Fraction(step) / FRAME_RATE - self.model.timing.time_offset))
