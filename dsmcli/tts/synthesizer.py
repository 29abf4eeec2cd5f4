"""Text-to-speech from Python: a generator of audio chunks, and the batch of inputs ``dsm speak`` runs.

    from dsmcli.tts.model import SpeakOptions, TtsModel
    from dsmcli.tts.synthesizer import Synthesizer

    synthesizer = Synthesizer(TtsModel.load("tts-1.6b-en_fr"), SpeakOptions(seed=1))
    for chunk in synthesizer.synthesize("Hello world.", voice="expresso/ex03-ex01_happy_001_channel1_334s.wav"):
        ...                          # AudioChunk: 80 ms of float32 PCM at 24 kHz, as soon as it is decoded

``synthesize`` takes a string, or an iterable of text pieces (an LLM's output: audio starts before the text
ends). It runs lazily in the caller's thread, on the same :class:`~dsmcli.tts.batch.TtsBatch` step as ``dsm
speak`` and the server, driven by the same :class:`~dsmcli.engine.scheduler.SlotScheduler`: with the same seed,
the samples are the command's. :meth:`Synthesizer.events` also yields the words with their times.
:meth:`Synthesizer.run` is the command's path: many inputs through the slots, results pushed to sinks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from dsmcli.engine.scheduler import SinkEnding, SlotScheduler
from dsmcli.errors import DsmError, InputError
from dsmcli.results import Word
from dsmcli.tts.batch import CLIP, AudioChunk, SpeechResult, TokenFrame, TtsBatch, TtsStream
from dsmcli.tts.model import DEFAULT_VOICE, SpeakOptions, TtsModel
from dsmcli.tts.slot_voice import SlotVoice, resolve_voices, slot_voice
from dsmcli.tts.text_feed import EntryFeed, FixedEntries, PulledEntries
from dsmcli.tts.voices import VoiceKind

__all__ = ["CLIP", "AudioChunk", "SpeakJob", "SpeechResult", "SpeechSink", "Synthesizer"]

TEXT_NAME = "text"


class SpeechSink:
    """Receives one job's outputs in order. Subclasses override what they need; ``wants_frames`` asks for the
    time-aligned token frames ``[1 + G]`` (tests, debugging)."""

    wants_frames = False

    def frame(self, frame: Tensor) -> None:
        """The time-aligned ``[text, audio_1 .. audio_G]`` tokens of the next frame (from time 0)."""

    def audio(self, pcm: np.ndarray) -> None:
        """``[FRAME_SIZE]`` float32 samples in [-1, 1], 24 kHz mono."""

    def word(self, word: Word) -> None:
        """A word of the generated speech, once its end is known."""

    def finish(self, result: SpeechResult) -> None:
        """The job completed."""

    def fail(self, error: DsmError) -> None:
        """The job failed (what was written stays valid)."""

    def abort(self) -> None:
        """The run stops (Ctrl-C, an unexpected error): finalize what was written."""


@dataclass
class SpeakJob:
    """One input: ``open()`` gives its voice and entry feed when a slot is free (errors fail only this job)."""

    name: str
    open: Callable[[], tuple[SlotVoice, EntryFeed]]
    sink: SpeechSink


class _JobStream(SinkEnding, TtsStream):
    """A command's input: its outputs go to its sink."""

    def __init__(self, job: SpeakJob) -> None:
        super().__init__(self._to_sink)
        self.job, self.name, self.wants_frames = job, job.name, job.sink.wants_frames

    def open(self, model: TtsModel, options: SpeakOptions) -> tuple[SlotVoice, EntryFeed]:
        return self.job.open()

    def _to_sink(self, event: object) -> None:
        sink = self.job.sink
        if isinstance(event, AudioChunk):
            sink.audio(event.pcm)
        elif isinstance(event, Word):
            sink.word(event)
        elif isinstance(event, TokenFrame):
            sink.frame(event.tokens)

    def abort(self) -> None:
        if not self.ended:
            self.ended = True
            self.job.sink.abort()


class _TextStream(TtsStream):
    """A generator call's input: its voice and entries, its events to its outbox."""

    reseed = True

    def __init__(self, voice: SlotVoice, feed: EntryFeed) -> None:
        super().__init__()
        self.voice, self.feed, self.name = voice, feed, feed.name

    def open(self, model: TtsModel, options: SpeakOptions) -> tuple[SlotVoice, EntryFeed]:
        return self.voice, self.feed


class Synthesizer:
    """Synthesizes speech with ``model`` on ``batch_size`` slots (see the module docstring)."""

    def __init__(self, model: TtsModel, options: SpeakOptions = SpeakOptions(), batch_size: int = 1):
        self.model, self.options = model, options
        self.batch = TtsBatch(model, options, batch_size)
        self.scheduler = SlotScheduler(self.batch, max_waiting=None, name="dsm-speak")
        self._voices: dict[str, SlotVoice] = {}

    @property
    def batch_size(self) -> int:
        return self.batch.batch_size

    def voice(self, name: str | None = None) -> SlotVoice:
        """The conditioning of voice ``name`` (as ``dsm speak --voice`` takes it: a name in the voices repo or a
        file; None: the model's default), projected once and kept: later streams with it project nothing.
        InputError for an unknown or unusable voice."""
        names = [name] if name is not None else [DEFAULT_VOICE] if self.model.voices.kind is VoiceKind.EMBEDDING \
            else []
        key = "\n".join(names)
        if key not in self._voices:
            resolved = resolve_voices(self.model.voices, names)
            self._voices[key] = slot_voice(self.model, resolved, self.model.cfg_value(self.options), self.batch.stream)
        return self._voices[key]

    def synthesize(self, text: str | Iterable[str], voice: str | SlotVoice | None = None) -> Iterator[AudioChunk]:
        """The speech of ``text`` (a string, or pieces as they come) in ``voice``, 80 ms at a time."""
        return (event for event in self.events(text, voice) if isinstance(event, AudioChunk))

    def events(self, text: str | Iterable[str], voice: str | SlotVoice | None = None) -> Iterator[AudioChunk | Word]:
        """:meth:`synthesize`, with each :class:`~dsmcli.results.Word` (start, end in the audio) once its end is
        known. The voice is resolved and the text checked now (InputError); the rest runs while iterating."""
        slot = voice if isinstance(voice, SlotVoice) else self.voice(voice)
        if isinstance(text, str):
            if not text.strip():
                raise InputError("no text to speak")
            feed: EntryFeed = FixedEntries(TEXT_NAME, self.model.entries([text], self.options))
        else:
            feed = PulledEntries(TEXT_NAME, text, self.model.entry_stream(self.options))
        return self._run(_TextStream(slot, feed))

    def _run(self, stream: _TextStream) -> Iterator[AudioChunk | Word]:
        self.scheduler.open(stream)
        yield from self.scheduler.iterate(stream)  # type: ignore[misc]

    def run(self, jobs: Iterable[SpeakJob]) -> None:
        """Synthesize every job (the ``dsm speak`` path); each sink gets its audio and words as they are
        generated. A job whose input or output fails is handed to its sink's ``fail``; on Ctrl-C or an
        unexpected error every running job's sink gets ``abort``."""
        for job in jobs:
            self.scheduler.open(_JobStream(job))
        self.scheduler.drain()
