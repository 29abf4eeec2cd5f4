"""Live text-to-speech streams on the slots of one shared batched model (push text, pull audio).

    engine = TtsEngine(TtsModel.load("tts-1.6b-en_fr"), SpeakOptions(seed=1), batch_size=4).start()
    stream = engine.open(voice="expresso/ex03-ex01_happy_001_channel1_334s.wav")
    stream.push("Hello world, ")    # text as it arrives (a word is complete once whitespace follows it)
    stream.end()
    for event in stream.events():
        ...                          # AudioChunk / Word, then StreamEnd (result: SpeechResult)

Each stream runs on :class:`~dsmcli.tts.batch.TtsBatch`, the step ``dsm speak`` runs (text-stream state machine,
audio delay, Mimi decode, word times); slots whose next step needs text that has not come yet pause while the
others go on. In the caller's thread, :meth:`~dsmcli.tts.synthesizer.Synthesizer.synthesize` is simpler.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from dsmcli.engine.scheduler import SlotScheduler
from dsmcli.errors import InputError
from dsmcli.tts.batch import AudioChunk, SpeechResult, TtsBatch, TtsStream
from dsmcli.tts.model import DEFAULT_VOICE, SpeakOptions, TtsModel
from dsmcli.tts.script import Entry, EntryStream
from dsmcli.tts.slot_voice import SlotVoice, slot_voice
from dsmcli.tts.text_feed import EntryFeed
from dsmcli.tts.voices import VoiceKind, _from_repo

__all__ = ["AudioChunk", "SpeechResult", "TtsBatch", "TtsEngine", "TtsSession"]

_END = object()  # input sentinel: the text is over
VOICE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\- ]*(/[A-Za-z0-9_][A-Za-z0-9_.\- ]*)*$")


class TtsSession(TtsStream):
    """One live text stream (see the module docstring). Alone on the model, it replays ``dsm speak --seed``."""

    reseed = True

    def __init__(self, voice: SlotVoice, deliver: Callable[[object], None] | None = None, name: str = "stream"):
        super().__init__(deliver)
        self.voice, self.name = voice, name

    def push(self, text: str) -> None:
        """A piece of text; words are complete once whitespace follows them (or at :meth:`end`)."""
        self._put_input(str(text))

    def end(self) -> None:
        """No more text: the last words are spoken and the stream ends."""
        self._put_input(_END)

    def open(self, model: TtsModel, options: SpeakOptions) -> tuple[SlotVoice, EntryFeed]:
        return self.voice, _LiveEntries(self, model.entry_stream(options))


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

    def wait(self, timeout: float) -> bool:
        return False  # the scheduler sleeps until input arrives


class TtsEngine:
    """A loaded TTS model serving live streams on ``batch_size`` slots (one step thread). Voices are taken by
    name from the model's voices repo only (no paths); their conditions are computed and their cross-attention
    sources projected once, and cached: a stream opening with a known voice projects nothing."""

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
                return slot_voice(self.model, [], self._cfg_value, self.batch.stream)
            if name not in self._voices:
                if len(name) > 256 or not VOICE_NAME.match(name) or ".." in name.split("/"):
                    raise InputError(f"voice {name!r}: give a voice name from the voices repo")
                resolved = _from_repo(name, name, self.model.voices, self.model.voices.voices)
                self._voices[name] = slot_voice(self.model, [resolved], self._cfg_value, self.batch.stream)
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
