"""Live speech-to-text streams on the slots of one shared batched model (push audio, pull words).

    engine = SttEngine(SttModel.load("stt-1b-en_fr"), batch_size=8).start()
    stream = engine.open()
    stream.push(pcm)            # float32 mono 24 kHz, any length, as it arrives (any thread)
    stream.end()                # no more audio: the last words come out
    for event in stream.events():
        ...                     # Word / EndOfTurn / VadStep / Marker, then StreamEnd

Each stream runs exactly what ``dsm transcribe`` runs on the same samples (the model's silence prefix, the
codes of frame t-1 at step t, ``InputEvents`` word timing, the silence suffix at the end), so it gives the
same words and times, relative to its first sample. A stream with no audio waiting pauses; the others go on.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dsmcli.audio import FrameChunker
from dsmcli.constants import FRAME_SIZE, SAMPLE_RATE
from dsmcli.engine.scheduler import SlotScheduler, SlotStream, StepReport, StreamEnd
from dsmcli.errors import InputError
from dsmcli.results import TranscriptEvent
from dsmcli.stt.model import SttModel
from dsmcli.stt.transcriber import InputEvents, Transcriber, TranscribeOptions, _StepValues

_END = object()  # input sentinel: the audio is over


@dataclass(frozen=True)
class VadStep:
    """One step of a stream on a model with VAD heads: ``prs[h]`` = P(pause) of head ``h`` (Kyutai's ``Step``);
    ``buffered_pcm``: samples received and not yet consumed."""

    step_idx: int
    prs: tuple[float, ...]
    buffered_pcm: int


@dataclass(frozen=True)
class Marker:
    """Echo of :meth:`SttSession.mark`: every sample pushed before it has gone through the model's delay."""

    id: int


class SttSession(SlotStream):
    """One live audio stream (see the module docstring). ``steps``: also emit :class:`VadStep` events."""

    def __init__(self, deliver: Callable[[object], None] | None = None, *, steps: bool = False) -> None:
        super().__init__(deliver)
        self.want_steps = steps
        self.pushed = 0  # samples pushed (caller side)
        self.consumed = 0  # samples of them encoded so far (set by the step thread)

    @property
    def backlog_seconds(self) -> float:
        """Audio pushed and not yet processed: a producer faster than real time can wait on it."""
        return max(0, self.pushed - self.consumed) / SAMPLE_RATE

    def push(self, pcm: np.ndarray) -> None:
        """Float32 mono samples at 24 kHz (any length)."""
        samples = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if not np.isfinite(samples).all():
            raise InputError("audio samples must be finite numbers")
        self.pushed += len(samples)
        self._put_input(samples.copy())

    def mark(self, marker_id: int) -> None:
        """Ask for a :class:`Marker` once the audio pushed so far has been transcribed."""
        self._put_input(Marker(int(marker_id)))

    def end(self) -> None:
        """No more audio: the stream finishes (silence suffix, last words) and ends."""
        self._put_input(_END)


@dataclass
class _Live:
    """A slot's stream: frames ready for Mimi (prefix, audio, suffix), word timing, pending markers."""

    session: SttSession
    events: InputEvents
    mimi: Any  # MimiState of batch 1 (see Transcriber._encode_next)
    frames: deque[np.ndarray]
    chunker: FrameChunker = field(default_factory=lambda: FrameChunker(FRAME_SIZE))
    samples: int = 0  # audio samples received
    encoded: int = 0  # frames given to Mimi (prefix, audio, suffix)
    step: int = 0
    ended: bool = False
    markers: deque[tuple[int, int]] = field(default_factory=deque)  # (steps due, id)

    @property
    def ready(self) -> bool:
        """A frame to encode, or the input is over and the final step (no frame) is due."""
        return bool(self.frames) or self.ended

    def buffered(self, prefix_frames: int) -> int:
        """Samples of the client's audio received and not yet encoded (the server's own silence not counted)."""
        return max(0, self.samples - max(0, self.encoded - prefix_frames) * FRAME_SIZE)


class SttBatch:
    """The STT side of :class:`~dsmcli.engine.scheduler.SlotBatch`: ``Transcriber``'s per-step logic with slots
    that pause (no audio waiting) and streams that arrive and leave at any step."""

    def __init__(self, model: SttModel, options: TranscribeOptions, batch_size: int) -> None:
        self.transcriber = Transcriber(model, options, batch_size)
        self.model, self.batch_size = model, batch_size
        self.lm_state = self.transcriber.stream.init_state(batch_size)
        device = model.lm.device
        self.prev_codes = torch.zeros(batch_size, model.config.n_q, 1, dtype=torch.long, device=device)
        self.slots: list[_Live | None] = [None] * batch_size
        self.heads = model.config.extra_heads_num_heads

    def start(self, fresh: dict[int, Any]) -> list[int]:
        mask = torch.zeros(self.batch_size, dtype=torch.bool)
        timing = self.model.timing
        for index, session in fresh.items():
            prefix = deque(np.zeros((timing.prefix_frames, FRAME_SIZE), dtype=np.float32))
            self.slots[index] = _Live(session, self.transcriber._input_events(), self.model.mimi.init_state(1), prefix)
            mask[index] = True
        mask = mask.to(self.model.lm.device)
        self.lm_state.reset(mask)
        self.prev_codes[mask] = 0
        return []

    def stop(self, index: int) -> None:
        self.slots[index] = None

    def _take_input(self, live: _Live) -> None:
        timing = self.model.timing
        for item in live.session.take_input():
            if live.ended:
                continue
            if item is _END:
                live.frames.extend(live.chunker.flush())
                live.frames.extend(np.zeros((timing.suffix_frames, FRAME_SIZE), dtype=np.float32))
                live.ended = True
            elif isinstance(item, Marker):
                frames = timing.prefix_frames + math.ceil(live.samples / FRAME_SIZE) + timing.suffix_frames
                live.markers.append((frames + 1, item.id))
            else:
                live.samples += len(item)  # type: ignore[arg-type]
                live.frames.extend(live.chunker.push(item))  # type: ignore[arg-type]

    def step(self) -> StepReport:
        ready = np.zeros(self.batch_size, dtype=bool)
        for index, live in enumerate(self.slots):
            if live is not None:
                self._take_input(live)
                ready[index] = live.ready
        if not ready.any():
            return StepReport(False)
        device = self.model.lm.device
        codes = torch.zeros_like(self.prev_codes)
        encoded = np.zeros(self.batch_size, dtype=bool)
        for index in np.flatnonzero(ready):
            live = self.slots[index]
            if live is not None and live.frames:
                wav = torch.from_numpy(live.frames.popleft()).to(device)[None, None]  # [1, 1, FRAME_SIZE]
                codes[index] = self.model.mimi.encode_step(wav, live.mimi)[0]  # [n_q, 1]
                encoded[index] = True
                live.encoded += 1
                live.session.consumed = min(live.samples, max(0, live.encoded - self.model.timing.prefix_frames)
                                            * FRAME_SIZE)
        active = torch.from_numpy(ready).to(device)
        out = self.transcriber.stream.step(self.prev_codes, self.lm_state, active=active)
        self.prev_codes = torch.where(active[:, None, None], codes, self.prev_codes)  # frame t-1 at step t
        values = _StepValues.read(out, self.transcriber.options.vad)
        wants_steps = any(live is not None and live.session.want_steps for live in self.slots)
        prs = out.extra_probs[:, :, 0].tolist() if out.extra_probs is not None and wants_steps else None
        finished = [int(i) for i in np.flatnonzero(ready) if not self._emit(int(i), values, prs, bool(encoded[i]))]
        for index in finished:
            self.slots[index] = None
        return StepReport(True, finished)

    def _emit(self, index: int, values: _StepValues, prs: list[list[float]] | None, encoded: bool) -> bool:
        """Slot ``index``'s events of this step (Step, words, due markers); False when its stream ended."""
        live = self.slots[index]
        assert live is not None
        end_of_turn = None if values.end_of_turn is None else values.end_of_turn[index]
        events: list[object] = []
        if prs is not None and live.session.want_steps:
            events.append(VadStep(live.step, tuple(prs[index]), live.buffered(self.model.timing.prefix_frames)))
        words: list[TranscriptEvent] = live.events.push(live.step, values.tokens[index], values.probabilities[index],
                                                        end_of_turn)
        if not encoded:  # the LM just consumed the stream's last frame
            words += live.events.finish(live.step)
        events += words
        live.step += 1
        while live.markers and (live.markers[0][0] <= live.step or not encoded):
            events.append(Marker(live.markers.popleft()[1]))
        if not encoded:
            events.append(StreamEnd(result=live.samples / self.model.mimi.sample_rate))
        for event in events:
            live.session.emit(event)
        return encoded


class SttEngine:
    """A loaded STT model serving live streams on ``batch_size`` slots (one step thread).

    ``max_waiting``: streams that may wait for a slot when all are busy (beyond that ``open`` raises
    :class:`~dsmcli.engine.scheduler.SchedulerFull`)."""

    def __init__(self, model: SttModel, options: TranscribeOptions = TranscribeOptions(), *, batch_size: int = 1,
                 max_waiting: int = 0) -> None:
        self.model = model
        self.batch = SttBatch(model, options, batch_size)
        self.scheduler = SlotScheduler(self.batch, max_waiting=max_waiting, name="dsm-stt-steps")

    @property
    def has_vad(self) -> bool:
        return self.model.config.extra_heads_num_heads > 0

    def open(self, deliver: Callable[[object], None] | None = None, *, steps: bool = False) -> SttSession:
        """A new stream (SchedulerFull when every slot is taken)."""
        session = SttSession(deliver, steps=steps)
        self.scheduler.open(session)
        return session

    def start(self) -> SttEngine:
        self.scheduler.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self.scheduler.stop(timeout)

    def __enter__(self) -> SttEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
