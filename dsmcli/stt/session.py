"""Live speech-to-text streams on the slots of one shared batched model (push audio, pull words).

    engine = SttEngine(SttModel.load("stt-1b-en_fr"), batch_size=8).start()
    stream = engine.open()
    stream.push(pcm)            # float32 mono 24 kHz, any length, as it arrives (any thread)
    stream.end()                # no more audio: the last words come out
    for event in stream.events():
        ...                     # Word / EndOfTurn / VadStep / Marker, then StreamEnd

Each stream runs on :class:`~dsmcli.stt.batch.SttBatch`, the step ``dsm transcribe`` runs (the model's silence
prefix, the codes of frame t-1 at step t, ``InputEvents`` word timing, the silence suffix at the end), so it gives
the same words and times, relative to its first sample. A stream with no audio waiting pauses; the others go on.
For a file or an array in the caller's thread, :meth:`~dsmcli.stt.transcriber.Transcriber.transcribe` is simpler.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dsmcli.constants import SAMPLE_RATE
from dsmcli.engine.scheduler import SlotScheduler
from dsmcli.errors import InputError
from dsmcli.stt.batch import SttBatch, SttStream
from dsmcli.stt.events import Marker, VadStep
from dsmcli.stt.feeds import END_OF_AUDIO, AudioFeed, PushedFrames
from dsmcli.stt.model import SttModel
from dsmcli.stt.options import TranscribeOptions

__all__ = ["Marker", "SttBatch", "SttEngine", "SttSession", "VadStep"]


class SttSession(SttStream):
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
        self._put_input(END_OF_AUDIO)

    def open_feed(self, prefix: int, suffix: int, lead: np.ndarray | None) -> AudioFeed:
        return PushedFrames(self.take_input, self._consumed, prefix, suffix, lead)

    def _consumed(self, samples: int) -> None:
        self.consumed = samples


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
