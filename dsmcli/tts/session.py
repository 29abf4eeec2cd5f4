"""Live text-to-speech streams on the slots of one shared batched model (push text, pull audio).

    engine = TtsEngine(TtsModel.load("tts-1.6b-en_fr"), SpeakOptions(seed=1), batch_size=4).start()
    stream = engine.open(voice="expresso/ex03-ex01_happy_001_channel1_334s.wav")
    stream.push("Hello world, ")    # text as it arrives (a word is complete once whitespace follows it)
    stream.end()
    for event in stream.events():
        ...                          # AudioChunk / Word, then StreamEnd (result: SpeechResult)

Each stream is one ``dsm speak`` job run by the same :class:`~dsmcli.tts.synthesizer.Synthesizer` code (text-stream
state machine, audio delay, Mimi decode, word times); slots whose next step needs text that has not come yet
pause while the others go on.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsmcli.engine.scheduler import SlotScheduler, SlotStream, StepReport, StreamEnd
from dsmcli.errors import DsmError, InputError
from dsmcli.results import Word
from dsmcli.tts.synthesizer import SpeakJob, SpeechResult, SpeechSink, Synthesizer, _Slot
from dsmcli.tts.model import DEFAULT_VOICE, SpeakOptions, TtsModel
from dsmcli.tts.slot_voice import SlotVoice, slot_voice
from dsmcli.tts.script import Entry, EntryStream
from dsmcli.tts.voices import VoiceKind, _from_repo

_END = object()  # input sentinel: the text is over
VOICE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\- ]*(/[A-Za-z0-9_][A-Za-z0-9_.\- ]*)*$")


@dataclass(frozen=True)
class AudioChunk:
    """One 80 ms frame of generated speech: ``pcm`` ``[FRAME_SIZE]`` float32 in [-1, 1], 24 kHz mono."""

    pcm: np.ndarray


class TtsSession(SlotStream):
    """One live text stream (see the module docstring)."""

    def __init__(self, voice: SlotVoice, deliver: Callable[[object], None] | None = None, name: str = "stream"):
        super().__init__(deliver)
        self.voice, self.name = voice, name

    def push(self, text: str) -> None:
        """A piece of text; words are complete once whitespace follows them (or at :meth:`end`)."""
        self._put_input(str(text))

    def end(self) -> None:
        """No more text: the last words are spoken and the stream ends."""
        self._put_input(_END)


class _LiveEntries:
    """The :class:`~dsmcli.tts.text_feed.EntryFeed` of a session: its pushed text through an ``EntryStream``."""

    def __init__(self, session: TtsSession, entries: EntryStream) -> None:
        self.name = session.name
        self._session, self._entries = session, entries
        self._count = 0

    def poll(self) -> tuple[list[Entry], bool]:
        out: list[Entry] = []
        for item in self._session.take_input():
            if self._entries.closed:
                break
            out += self._entries.close() if item is _END else self._entries.feed(item)  # type: ignore[arg-type]
        self._count += len(out)
        if self._entries.closed and self._count == 0:
            raise InputError("no text to speak")
        return out, self._entries.closed

    def wait(self, timeout: float) -> None:
        return None  # the scheduler sleeps until input arrives


class _SessionSink(SpeechSink):
    """A job's outputs as session events."""

    def __init__(self, session: TtsSession) -> None:
        self.session = session

    def audio(self, pcm: np.ndarray) -> None:
        self.session.emit(AudioChunk(np.array(pcm, dtype=np.float32)))

    def word(self, word: Word) -> None:
        self.session.emit(word)

    def finish(self, result: SpeechResult) -> None:
        self.session.emit(StreamEnd(result=result))

    def fail(self, error: DsmError) -> None:
        self.session.emit(StreamEnd(error=str(error)))

    def abort(self) -> None:
        self.session.emit(StreamEnd(error="aborted"))


def _no_open() -> Any:
    raise AssertionError("session jobs are started by TtsBatch.start")


class TtsBatch:
    """The TTS side of :class:`~dsmcli.engine.scheduler.SlotBatch`, driving a :class:`Synthesizer`'s steps."""

    def __init__(self, model: TtsModel, options: SpeakOptions, batch_size: int) -> None:
        self.model, self.options, self.batch_size = model, options, batch_size
        self.synth = Synthesizer(model, options, batch_size)
        self.slots: list[_Slot | None] = [None] * batch_size

    def start(self, fresh: dict[int, Any]) -> list[int]:
        generator = self.synth.stream.generator
        if generator is not None and self.options.seed is not None and all(
                slot is None for i, slot in enumerate(self.slots) if i not in fresh):
            generator.manual_seed(self.options.seed)  # a stream alone on the model replays `dsm speak --seed`
        for index, session in fresh.items():
            feed = _LiveEntries(session, self.model.entry_stream(self.options))
            self.slots[index] = _Slot(SpeakJob(session.name, _no_open, _SessionSink(session)), session.voice, feed)
        self.synth._start(self.slots, list(fresh))
        return [index for index in fresh if self.slots[index] is None]

    def stop(self, index: int) -> None:
        if self.slots[index] is not None:
            self.slots[index] = None
            self.synth.text.release(index)

    def step(self) -> StepReport:
        before = [slot is not None for slot in self.slots]
        self.synth._pull_text(self.slots)
        self.synth._finish_done(self.slots)
        ready = self.synth.text.ready()
        stepped = bool(ready.any())
        if stepped:
            self.synth._step(self.slots, ready)
        return StepReport(stepped, [i for i, was in enumerate(before) if was and self.slots[i] is None])


class TtsEngine:
    """A loaded TTS model serving live streams on ``batch_size`` slots (one step thread). Voices are taken by
    name from the model's voices repo only (no paths); their conditions are computed once and cached."""

    def __init__(self, model: TtsModel, options: SpeakOptions = SpeakOptions(), *, batch_size: int = 1,
                 max_waiting: int = 0, default_voice: str | None = None) -> None:
        self.model, self.options = model, options
        self._default_voice = default_voice
        self.batch = TtsBatch(model, options, batch_size)
        self.scheduler = SlotScheduler(self.batch, max_waiting=max_waiting, name="dsm-tts-steps")
        self._cfg_value = model.cfg_value(options)
        self._voices: dict[str, SlotVoice] = {}
        self._lock = threading.Lock()

    @property
    def default_voice(self) -> str | None:
        """The voice of streams opened without one: the one given, else the reference scripts' default (embedding
        models) or none (audio-prefix models speak without a prefix)."""
        if self._default_voice is not None:
            return self._default_voice
        return DEFAULT_VOICE if self.model.voices.kind is VoiceKind.EMBEDDING else None

    def voice(self, name: str | None) -> SlotVoice:
        """The conditions of voice ``name`` (a path inside the voices repo; None = the default). InputError."""
        name = name or self.default_voice
        with self._lock:
            if name is None:
                return slot_voice(self.model, [], self._cfg_value)
            if name not in self._voices:
                if len(name) > 256 or not VOICE_NAME.match(name) or ".." in name.split("/"):
                    raise InputError(f"voice {name!r}: give a voice name from the voices repo")
                resolved = _from_repo(name, name, self.model.voices, self.model.voices.voices)
                self._voices[name] = slot_voice(self.model, [resolved], self._cfg_value)
            return self._voices[name]

    def open(self, voice: str | None = None, deliver: Callable[[object], None] | None = None) -> TtsSession:
        """A new stream with ``voice`` (InputError for an unknown voice, SchedulerFull when every slot is taken)."""
        session = TtsSession(self.voice(voice), deliver, name=voice or "default")
        self.scheduler.open(session)
        return session

    def start(self) -> TtsEngine:
        self.scheduler.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self.scheduler.stop(timeout)

    def __enter__(self) -> TtsEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
