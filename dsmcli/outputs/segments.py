"""Group timed words into segments, and segments into subtitle cues, incrementally.

``SegmentBuilder`` cuts the word stream into segments (sentences, turns); ``CueBuilder``
lays segments out as subtitle cues with whisper's subtitle options. Both emit an item only
once it can no longer change, so writers can append it to a file at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dsmcli.results import EndOfTurn, Segment, TranscriptEvent, Word

SENTENCE_END = re.compile(r"[.?!\u2026\u3002\uff1f\uff01][\"'\u201d\u2019\u00bb)\]]*$")
LONG_PAUSE_SECONDS = 3.0  # whisper: a longer pause starts a new cue (width and count set)
UNLIMITED = 1000  # whisper's stand-in for "no limit" on line width / words per line


@dataclass(frozen=True)
class SegmentOptions:
    """Where ``SegmentBuilder`` cuts.

    ``gap``: cut when a word starts more than this many seconds after the previous one ends;
    ``max_duration``: cut before a word that would make the segment longer than this.
    """

    split_on_punctuation: bool = True
    split_on_end_of_turn: bool = True
    gap: float | None = None
    max_duration: float | None = 30.0

    def __post_init__(self) -> None:
        for name in ("gap", "max_duration"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")


class SegmentBuilder:
    """Words and end-of-turn events in, closed ``Segment``s out (ids from 0)."""

    def __init__(self, options: SegmentOptions = SegmentOptions()) -> None:
        self.options = options
        self._words: list[Word] = []
        self._next_id = 0

    def push(self, event: TranscriptEvent) -> list[Segment]:
        """Consume a word or an end-of-turn; return the segments it closed (0, 1 or 2)."""
        if isinstance(event, EndOfTurn):
            return self.end_turn()
        return self.close_before(event) + self.add(event)

    def close_before(self, word: Word) -> list[Segment]:
        """The segment ``word`` cannot join (a pause or length limit), closed before the word is added."""
        return self._close() if self._breaks_before(word) else []

    def add(self, word: Word) -> list[Segment]:
        """Append ``word`` (after ``close_before``); return the segment it ends (sentence end), if any."""
        self._words.append(word)
        if self.options.split_on_punctuation and SENTENCE_END.search(word.text.rstrip()):
            return self._close()
        return []

    def end_turn(self) -> list[Segment]:
        """An end of turn: close the open segment (when the options split there)."""
        return self._close() if self.options.split_on_end_of_turn else []

    def finish(self) -> list[Segment]:
        """Close the last segment at the end of the stream."""
        return self._close()

    def _breaks_before(self, word: Word) -> bool:
        if not self._words:
            return False
        gap, max_duration = self.options.gap, self.options.max_duration
        if gap is not None and word.start - self._words[-1].end > gap:
            return True
        return max_duration is not None and word.end - self._words[0].start > max_duration

    def _close(self) -> list[Segment]:
        if not self._words:
            return []
        segment = Segment.from_words(self._next_id, self._words)
        self._words = []
        self._next_id += 1
        return [segment]


@dataclass(frozen=True)
class SubtitleOptions:
    """whisper's subtitle layout options (``--max_line_width`` and friends), same semantics.

    ``max_line_count`` only acts with ``max_line_width``; with both set, segments may be
    merged into cues and a pause over 3 s starts a new cue; ``max_words_per_line`` has no
    effect when both are set; ``highlight_words`` underlines each word in its own cue.
    """

    max_line_width: int | None = None
    max_line_count: int | None = None
    max_words_per_line: int | None = None
    highlight_words: bool = False

    def __post_init__(self) -> None:
        for name in ("max_line_width", "max_line_count", "max_words_per_line"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


@dataclass(frozen=True)
class Cue:
    """One subtitle: ``start``/``end`` seconds and its text (lines joined by newlines)."""

    start: float
    end: float
    text: str


@dataclass
class _Line:
    """A word laid out in the cue being built: its text carries its line break, if any."""

    text: str
    start: float
    end: float


@dataclass
class _Layout:
    subtitle: list[_Line] = field(default_factory=list)
    line_len: int = 0
    line_count: int = 1
    last_start: float | None = None


class CueBuilder:
    """Segments in, subtitle cues out, following whisper's ``SubtitlesWriter`` rules."""

    def __init__(self, options: SubtitleOptions = SubtitleOptions()) -> None:
        self.options = options
        self.preserve_segments = options.max_line_count is None or options.max_line_width is None
        self.width = options.max_line_width or UNLIMITED
        self.words_per_line = options.max_words_per_line or UNLIMITED
        self._layout = _Layout()

    def push(self, segment: Segment) -> list[Cue]:
        """Lay out ``segment``'s words; return the cues that are now final."""
        if not segment.words:  # whisper's segment-level layout
            return self._flush() + [Cue(segment.start, segment.end, _safe(segment.text.strip()))]
        cues: list[Cue] = []
        words = segment.words
        for chunk_start in range(0, len(words), self.words_per_line):
            chunk = words[chunk_start : chunk_start + self.words_per_line]
            for index, word in enumerate(chunk):
                cues += self._place(word, chunk_first=index == 0)
        if self.preserve_segments:  # the next word would break here anyway
            cues += self._flush()
        return cues

    def finish(self) -> list[Cue]:
        """The last cue(s) at the end of the stream."""
        return self._flush()

    def _place(self, word: Word, chunk_first: bool) -> list[Cue]:
        layout, cues = self._layout, []
        if layout.last_start is None:
            layout.last_start = word.start
        long_pause = not self.preserve_segments and word.start - layout.last_start > LONG_PAUSE_SECONDS
        has_room = layout.line_len + len(word.text) <= self.width
        seg_break = chunk_first and bool(layout.subtitle) and self.preserve_segments
        text = word.text
        if layout.line_len > 0 and has_room and not long_pause and not seg_break:
            layout.line_len += len(text)
        else:
            text = text.strip()
            count = self.options.max_line_count
            new_cue = count is not None and (long_pause or layout.line_count >= count)
            if layout.subtitle and new_cue or seg_break:
                cues = self._flush()
            elif layout.line_len > 0:
                layout.line_count += 1
                text = "\n" + text
            layout.line_len = len(text.strip())
        layout.subtitle.append(_Line(text, word.start, word.end))
        layout.last_start = word.start
        return cues

    def _flush(self) -> list[Cue]:
        layout = self._layout
        lines, layout.subtitle, layout.line_count, layout.line_len = layout.subtitle, [], 1, 0
        if not lines:
            return []
        if self.options.highlight_words:
            return _highlighted(lines)
        return [Cue(lines[0].start, lines[-1].end, _safe("".join(line.text for line in lines)))]


def _highlighted(lines: list[_Line]) -> list[Cue]:
    """whisper's ``highlight_words``: a cue per word with it underlined, plus gap cues."""
    plain = _safe("".join(line.text for line in lines))
    cues: list[Cue] = []
    last = lines[0].start
    for index, line in enumerate(lines):
        if _ms(last) != _ms(line.start):
            cues.append(Cue(last, line.start, plain))
        texts = [_underline(other.text) if j == index else other.text for j, other in enumerate(lines)]
        cues.append(Cue(line.start, line.end, _safe("".join(texts))))
        last = line.end
    return cues


def _underline(text: str) -> str:
    stripped = text.lstrip()
    return f"{text[: len(text) - len(stripped)]}<u>{stripped}</u>"


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _safe(text: str) -> str:
    """An arrow in the text would end the cue's timing line in some players."""
    return text.replace("-->", "->")
