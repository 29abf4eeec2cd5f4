"""Speech-to-text from Python: a generator of words, and the batch of inputs ``dsm transcribe`` runs.

    from dsmcli.stt import SttModel
    from dsmcli.stt.transcriber import Transcriber

    words, info = Transcriber(SttModel.load("stt-1b-en_fr")).transcribe("talk.mp3")
    for word in words:              # each Word as soon as it is final (EndOfTurn too with vad=True)
        print(f"[{word.start:.2f} -> {word.end:.2f}]{word.text}")

``transcribe`` takes a file path, a float32 mono 24 kHz numpy array, or an iterable of such chunks (a live
source: words come out while it is still producing). It runs lazily in the caller's thread, on the same
:class:`~dsmcli.stt.batch.SttBatch` step as ``dsm transcribe`` and the server, driven by the same
:class:`~dsmcli.engine.scheduler.SlotScheduler`: the words and times are the command's. With ``batch_size``
> 1, several ``transcribe`` iterators of one ``Transcriber`` share the batch (each step advances them all).
:meth:`Transcriber.run` is the command's path: many inputs through the slots, results pushed to sinks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dsmcli.constants import SAMPLE_RATE
from dsmcli.engine.scheduler import SinkEnding, SlotScheduler
from dsmcli.errors import DsmError, InputError
from dsmcli.results import TranscriptEvent
from dsmcli.stt.batch import SttBatch, SttStream
from dsmcli.stt.events import InputEvents, StepValues
from dsmcli.stt.feeds import AudioFeed, FrameFeed
from dsmcli.stt.model import SttModel
from dsmcli.stt.options import DEFAULT_TEXT_TOP_K, TranscribeOptions
from dsmcli.stt.prompt import SttPrompt

__all__ = ["DEFAULT_TEXT_TOP_K", "FrameFeed", "InputEvents", "StepValues", "SttJob", "TranscribeOptions",
           "Transcriber", "TranscriptSink", "TranscriptionInfo"]

AudioInput = str | os.PathLike[str] | np.ndarray | Iterable[np.ndarray]


@dataclass
class TranscriptionInfo:
    """About one :meth:`Transcriber.transcribe` call. ``duration``: seconds of audio, known up front for most
    files, else (and always once the words are exhausted) the length actually read; ``delay_seconds``: how far
    the text lags the audio (a word comes out about that long after it is spoken)."""

    model: str
    delay_seconds: float
    sample_rate: int = SAMPLE_RATE
    duration: float | None = None


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


class AudioStream(SttStream):
    """A stream whose audio is pulled from chunks (``open()`` is called when it gets a slot)."""

    def __init__(self, open: Callable[[], Iterable[np.ndarray]],
                 deliver: Callable[[object], None] | None = None) -> None:
        super().__init__(deliver)
        self._open = open

    def open_feed(self, prefix: int, suffix: int, lead: np.ndarray | None) -> AudioFeed:
        return FrameFeed(self._open(), prefix, suffix, lead)


class _JobStream(SinkEnding, AudioStream):
    """A command's input: events go to its sink, each step to the progress and token observers."""

    def __init__(self, job: SttJob, progress: Callable[[str, int], None] | None,
                 on_token: Callable[[SttJob, int, int], None] | None) -> None:
        super().__init__(job.open, deliver=job.sink.event)
        self.job, self._progress, self._on_token = job, progress, on_token

    def stepped(self, step: int, token: int, audio_samples: int) -> None:
        if self._on_token is not None:
            self._on_token(self.job, step, token)
        if self._progress is not None:
            self._progress(self.job.name, audio_samples)

    def abort(self) -> None:
        return None  # the command finalizes its outputs itself (Ctrl-C)


def _chunks(audio: AudioInput) -> tuple[Iterable[np.ndarray], float | None]:
    """Audio chunks of a path (opened now: InputError at once), an array or an iterable; and the duration when
    known up front."""
    if isinstance(audio, (str, os.PathLike)):
        from dsmcli.audio import open_audio

        source = open_audio(os.fspath(audio))
        return source, source.duration
    if isinstance(audio, np.ndarray):
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1 or not np.isfinite(samples).all():
            raise InputError("audio must be a 1-D array of finite float32 samples (mono, 24 kHz)")
        return [samples], len(samples) / SAMPLE_RATE
    return audio, None


class Transcriber:
    """Transcribes audio with ``model`` on ``batch_size`` slots (see the module docstring)."""

    def __init__(self, model: SttModel, options: TranscribeOptions = TranscribeOptions(), batch_size: int = 1,
                 prompt: SttPrompt | None = None):
        self.model, self.options = model, options
        self.batch = SttBatch(model, options, batch_size, prompt)
        self.scheduler = SlotScheduler(self.batch, max_waiting=None, name="dsm-transcribe")

    @property
    def batch_size(self) -> int:
        return self.batch.batch_size

    def transcribe(self, audio: AudioInput) -> tuple[Iterator[TranscriptEvent], TranscriptionInfo]:
        """``(events, info)``: the words (and ends of turn) of ``audio`` as a lazy iterator, and what is known
        about the run. A path is opened at once (InputError for a bad file); decoding errors raise while
        iterating."""
        chunks, duration = _chunks(audio)
        info = TranscriptionInfo(self.model.name, float(self.model.timing.delay_seconds), duration=duration)
        return self._events(chunks, info), info

    def _events(self, chunks: Iterable[np.ndarray], info: TranscriptionInfo) -> Iterator[TranscriptEvent]:
        stream = AudioStream(lambda: chunks)
        self.scheduler.open(stream)
        yield from self.scheduler.iterate(stream)  # type: ignore[misc]
        info.duration = stream.result

    def run(self, jobs: Iterable[SttJob], progress: Callable[[str, int], None] | None = None,
            on_token: Callable[[SttJob, int, int], None] | None = None) -> None:
        """Transcribe every job (the ``dsm transcribe`` path); each job's sink gets its events as soon as they
        are final. ``progress(name, samples_read)`` is called every step per input; ``on_token(job, step,
        token)`` observes the raw text tokens (tests, debugging). A job whose input or output fails is handed
        to its sink's ``fail`` and its slot goes to the next job."""
        for job in jobs:
            self.scheduler.open(_JobStream(job, progress, on_token))
        self.scheduler.drain()
