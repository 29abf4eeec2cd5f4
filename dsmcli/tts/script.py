"""Text → entries: the words (and pauses) the TTS state machine feeds to the model (FORMAT.md §6.2).

A *script* is a list of turns; turn 0, 2, 4, … is the MAIN speaker, 1, 3, … the OTHER one (an empty first turn
starts with OTHER). Each turn is normalised (``’``→``'``, ``:``→space, ``(`` and ``)`` removed), split on
whitespace and on ``<break time="Xs"/>`` tags, and every word is SentencePiece-encoded on its own. A multi-speaker
model (one with a ``speaker_wavs`` conditioner) gets the speaker token before the first word of a turn when the
speaker changes.

:func:`script_to_entries` does a whole script at once; :class:`EntryStream` does the same for text that arrives
in pieces (``llm ... | dsm speak -``) and yields exactly the same entries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from dsmcli.constants import FRAME_RATE
from dsmcli.errors import InputError
from dsmcli.tts.tokens import TtsTokenIds

# Forced padding between words used by the reference scripts and server ("articulates a bit better").
DEFAULT_PADDING_BETWEEN = 1

# Same syntax as the reference (including its unescaped "." that accepts any separator character).
_EVENT_RE = re.compile(r'(?:<break\s+time="([0-9]+(?:.[0-9]*)?)s"\s*/?>)|(?:\s+)')
# A break tag's only whitespace-free head: a word ending with it may be the start of a tag.
_BREAK_HEAD = "<break"
# What may follow ``<break`` and still become a complete tag once more text arrives.
_PARTIAL_TAG_TAIL_RE = re.compile(
    r'\s+(?:t(?:i(?:m(?:e(?:=(?:")?)?)?)?)?)?'
    r'|\s+time="[0-9]+(?:.[0-9]*)?(?:s(?:"\s*/?)?)?'
)
_REPLACEMENTS = str.maketrans({"’": "'", ":": " ", "(": None, ")": None})


class TextTokenizer(Protocol):
    """What we need from a SentencePiece processor."""

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class Entry:
    """One word to speak, or a pause.

    ``tokens``: SentencePiece ids of the word (with the speaker token first when a turn starts), empty for a
    break. ``padding``: steps of forced PAD after the entry is consumed (the pause length for a break).
    """

    tokens: tuple[int, ...]
    text: str
    padding: int = 0

    @property
    def is_break(self) -> bool:
        return not self.tokens


@dataclass(frozen=True)
class _Word:
    text: str


@dataclass(frozen=True)
class _Break:
    seconds: str  # as written in the tag


def normalize_text(text: str) -> str:
    """The reference's character replacements; they act per character, so pieces can be normalised apart."""
    return text.translate(_REPLACEMENTS)


def _tag_may_continue(text: str, ws_start: int, word_start: int) -> bool:
    """True when the whitespace at ``ws_start`` may be inside a ``<break …>`` tag not yet complete."""
    head_start = ws_start - len(_BREAK_HEAD)
    if head_start < word_start or not text.startswith(_BREAK_HEAD, head_start):
        return False
    return _PARTIAL_TAG_TAIL_RE.fullmatch(text, ws_start) is not None


def _scan(text: str, final: bool) -> tuple[list[_Word | _Break], int]:
    """Split normalised text into words and breaks, as the reference's turn loop does.

    With ``final=False`` the scan stops before anything that later text could change (a word not yet followed
    by whitespace, a break tag still being written) and returns where the unconsumed text starts.
    """
    events: list[_Word | _Break] = []
    pos = 0
    while pos < len(text):
        match = _EVENT_RE.search(text, pos)
        if match is None:
            break
        if not final and match.group(1) is None and _tag_may_continue(text, match.start(), pos):
            break
        if match.start() > pos:
            events.append(_Word(text[pos:match.start()]))
        if match.group(1) is not None:
            events.append(_Break(match.group(1)))
        pos = match.end()
    if final and pos < len(text):
        events.append(_Word(text[pos:]))
        pos = len(text)
    return events, pos


class _EntryBuilder:
    """Turns words and breaks into entries, tracking the turn and the last speaker token written."""

    def __init__(self, tokenizer: TextTokenizer, token_ids: TtsTokenIds, multi_speaker: bool,
                 padding_between: int, frame_rate: Fraction | float) -> None:
        self.tokenizer = tokenizer
        self.token_ids = token_ids
        self.multi_speaker = multi_speaker
        self.padding_between = padding_between
        self.frame_rate = float(frame_rate)
        self.turn = 0
        self._turn_started = False
        self._last_speaker: int | None = None

    def next_turn(self) -> None:
        self.turn += 1
        self._turn_started = False

    def build(self, events: Iterable[_Word | _Break]) -> list[Entry]:
        return [self._word(ev.text) if isinstance(ev, _Word) else self._break(ev.seconds) for ev in events]

    def _word(self, word: str) -> Entry:
        tokens = list(self.tokenizer.encode(word))
        if not self._turn_started:
            self._turn_started = True
            speaker = self.token_ids.speaker(self.turn)
            if self.multi_speaker and speaker != self._last_speaker:
                self._last_speaker = speaker
                tokens.insert(0, speaker)
        padding = max(0, self.padding_between + len(tokens) - 1) if self.padding_between > 0 else 0
        return Entry(tokens=tuple(tokens), text=word, padding=padding)

    def _break(self, seconds: str) -> Entry:
        try:
            duration = float(seconds)
        except ValueError:
            raise InputError(f'invalid pause <break time="{seconds}s"/>: write the time like "0.5s"') from None
        # Python's round (half to even) on the float product, exactly as the reference.
        return Entry(tokens=(), text="", padding=int(round(duration * self.frame_rate)))


def script_to_entries(tokenizer: TextTokenizer, token_ids: TtsTokenIds, script: Sequence[str], *,
                      multi_speaker: bool, padding_between: int = DEFAULT_PADDING_BETWEEN,
                      frame_rate: Fraction | float = FRAME_RATE) -> list[Entry]:
    """Entries of a whole script (a list of turns, starting with MAIN). See the module docstring."""
    builder = _EntryBuilder(tokenizer, token_ids, multi_speaker, padding_between, frame_rate)
    entries: list[Entry] = []
    for index, turn in enumerate(script):
        if index:
            builder.next_turn()
        events, _ = _scan(normalize_text(turn), final=True)
        entries.extend(builder.build(events))
    return entries


class EntryStream:
    """Entries of text arriving in pieces; the concatenated output equals :func:`script_to_entries`.

    A word is complete only once whitespace (or a break tag, or the end) follows it, so :meth:`feed` returns the
    entries completed by that piece and keeps the rest; :meth:`next_turn` ends the current turn (the next piece
    belongs to the other speaker); :meth:`close` flushes the last word.

    >>> stream = EntryStream(tok, ids, multi_speaker=True)
    >>> for piece in pieces:
    ...     machine_batch.append_entries(slot, stream.feed(piece))
    >>> machine_batch.append_entries(slot, stream.close()); machine_batch.close_text(slot)
    """

    def __init__(self, tokenizer: TextTokenizer, token_ids: TtsTokenIds, *, multi_speaker: bool,
                 padding_between: int = DEFAULT_PADDING_BETWEEN, frame_rate: Fraction | float = FRAME_RATE) -> None:
        self._builder = _EntryBuilder(tokenizer, token_ids, multi_speaker, padding_between, frame_rate)
        self._pending = ""
        self._closed = False

    @property
    def turn(self) -> int:
        """Index of the current turn (0 = MAIN)."""
        return self._builder.turn

    @property
    def closed(self) -> bool:
        return self._closed

    def feed(self, text: str) -> list[Entry]:
        """Add a piece of text; returns the entries it completed."""
        if self._closed:
            raise ValueError("EntryStream is closed")
        self._pending += normalize_text(text)
        events, consumed = _scan(self._pending, final=False)
        self._pending = self._pending[consumed:]
        return self._builder.build(events)

    def next_turn(self) -> list[Entry]:
        """End the current turn (flushing its last word); later text is the next speaker's."""
        entries = self._flush()
        self._builder.next_turn()
        return entries

    def close(self) -> list[Entry]:
        """End of text: the entries still pending. Further :meth:`feed` calls raise."""
        entries = self._flush()
        self._closed = True
        return entries

    def iter_entries(self, pieces: Iterable[str]) -> Iterator[Entry]:
        """Entries of an iterable of text pieces, as soon as each is complete; closes the stream at the end."""
        for piece in pieces:
            yield from self.feed(piece)
        yield from self.close()

    def _flush(self) -> list[Entry]:
        if self._closed:
            raise ValueError("EntryStream is closed")
        events, _ = _scan(self._pending, final=True)
        self._pending = ""
        return self._builder.build(events)
