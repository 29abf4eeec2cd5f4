"""Typed transcription results: words, end-of-turn events, segments and whole transcripts.

Times are float seconds from the start of the input audio. Word texts keep their leading
space (whisper style), so ``"".join(w.text for w in words)`` rebuilds the text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Word:
    """One recognised word: ``text`` (with its leading space), ``start``/``end`` in seconds.

    ``probability`` is the mean text-token probability of the word when the caller knows it;
    ``token_logprobs`` the log-probabilities of its text tokens (empty when unknown; not compared).
    """

    text: str
    start: float
    end: float
    probability: float | None = None
    token_logprobs: tuple[float, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class EndOfTurn:
    """The semantic VAD predicted the end of the speaker's turn at ``time`` seconds."""

    time: float
    probability: float


TranscriptEvent = Word | EndOfTurn


@dataclass(frozen=True)
class Segment:
    """A run of words shown together (a sentence, a subtitle cue): ``id`` counts from 0."""

    id: int
    start: float
    end: float
    text: str
    words: tuple[Word, ...]

    @classmethod
    def from_words(cls, id: int, words: Iterable[Word]) -> Segment:
        """The segment spanning ``words`` (at least one), its text their concatenation."""
        items = tuple(words)
        if not items:
            raise ValueError("a segment needs at least one word")
        text = "".join(word.text for word in items)
        return cls(id=id, start=items[0].start, end=items[-1].end, text=text, words=items)


@dataclass(frozen=True)
class Transcript:
    """A finished transcription of one input.

    ``language`` is the language code when known; ``model`` the checkpoint name;
    ``duration`` the input length in seconds when known.
    """

    text: str
    segments: tuple[Segment, ...]
    language: str | None
    model: str
    duration: float | None

    @classmethod
    def from_segments(
        cls,
        segments: Iterable[Segment],
        *,
        language: str | None,
        model: str,
        duration: float | None,
    ) -> Transcript:
        """The transcript whose text is the concatenation of ``segments``' texts."""
        items = tuple(segments)
        text = "".join(segment.text for segment in items)
        return cls(text=text, segments=items, language=language, model=model, duration=duration)
