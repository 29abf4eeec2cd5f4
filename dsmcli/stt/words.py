"""Word assembly for streaming STT: one text token per step in, final timed words out.

The rules follow the reference word-timestamp logic (FORMAT.md §5.3):

* Boundaries are the steps where the model emits end-of-padding (EPAD). The tokens between
  two boundaries form a *segment*; its words start at ``boundary + 1`` and end at the next
  boundary. Token ids ``<= pad_id`` (EPAD, bos/eos, PAD) carry no text and are dropped.
* A segment holding several words (a missed boundary) gives each word but the last
  ``len(tokenizer.encode(word))`` steps from a running start; the last word runs to the end.
* The last segment ends at its first eos token, else after ``min(length, start + 1 s)``.
* Step ``s`` is at ``s / frame_rate - time_offset_seconds`` seconds, clamped at 0, computed
  exactly in rationals and rounded once (the caller passes the exact offset, text delay
  plus silence prefix, as a ``Fraction`` or as a float read as its decimal value).

Deliberate differences from the reference script, all in cases where it loses text:
tokens before the first EPAD form a segment starting at the first step (the script drops
them); tokens after an eos or more than 1 s after the last boundary are kept (the script
drops them, or raises on its float slice index); a word's running start never passes its
segment's end.

A word is emitted once it is final, i.e. when the next boundary closes its segment (or at
``finish``); emitted words are never revised.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Protocol

from dsmcli.constants import FRAME_RATE
from dsmcli.results import Word

WORD_START_MARK = "\u2581"  # SentencePiece's "▁": the piece starts a new word
LAST_WORD_MAX_SECONDS = 1  # the last segment, without eos, lasts at most this long


class TextTokenizer(Protocol):
    """The SentencePiece calls word assembly needs (``sentencepiece.SentencePieceProcessor``)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def id_to_piece(self, id: int) -> str: ...


@dataclass
class _OpenSegment:
    """Tokens seen since the last boundary (the boundary step is ``start - 1``)."""

    start: int
    ids: list[int]
    probabilities: list[float | None]
    eos_step: int | None = None
    logprobs: list[float | None] = field(default_factory=list)


class WordAssembler:
    """Turns the stream of STT text tokens of ONE stream into timed words, incrementally.

    Feed every output step in order with ``push(step, token)``; call ``finish(last_step)``
    once at the end of the stream. ``reset()`` starts a new stream (e.g. a reused batch slot).
    """

    def __init__(
        self,
        tokenizer: TextTokenizer,
        *,
        end_of_padding_id: int,
        pad_id: int,
        eos_id: int,
        time_offset_seconds: Fraction | float,
        frame_rate: Fraction | float = FRAME_RATE,
    ) -> None:
        self.tokenizer = tokenizer
        self.end_of_padding_id = end_of_padding_id
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.time_offset = _exact(time_offset_seconds)
        self.frame_rate = Fraction(frame_rate)
        self._segment: _OpenSegment | None = None
        self._last_step: int | None = None

    def reset(self) -> None:
        """Forget the current stream."""
        self._segment = None
        self._last_step = None

    @property
    def has_pending_text(self) -> bool:
        """True while text tokens wait for the next boundary (or ``finish``) to become words."""
        return self._segment is not None and bool(self._segment.ids)

    def push(self, step: int, token: int, probability: float | None = None,
             logprob: float | None = None) -> list[Word]:
        """Consume the text token of ``step``; return the words this step made final.

        ``probability`` (optional) is the model's probability of ``token``; a word's
        probability is the mean over its text tokens. ``logprob`` (optional) is its
        log-probability; a word keeps those of its text tokens (``Word.token_logprobs``).
        """
        step, token = int(step), int(token)  # numpy / torch scalars welcome
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"steps must increase: got {step} after {self._last_step}")
        self._last_step = step
        words: list[Word] = []
        if token == self.end_of_padding_id:
            if self._segment is not None:
                words = self._close(self._segment, Fraction(step))
            self._segment = _OpenSegment(start=step + 1, ids=[], probabilities=[])
            return words
        if self._segment is None:  # text before the first boundary
            self._segment = _OpenSegment(start=step, ids=[], probabilities=[])
        if token == self.eos_id and self._segment.eos_step is None:
            self._segment.eos_step = step
        if token > self.pad_id:
            self._segment.ids.append(token)
            self._segment.probabilities.append(None if probability is None else float(probability))
            self._segment.logprobs.append(None if logprob is None else float(logprob))
        return words

    def finish(self, last_step: int | None = None) -> list[Word]:
        """Close the stream whose final step is ``last_step`` (default: the last pushed)."""
        segment, self._segment = self._segment, None
        last = self._last_step if last_step is None else last_step
        if segment is None or last is None:
            return []
        if segment.eos_step is not None:
            end = Fraction(segment.eos_step)
        else:
            end = min(Fraction(last + 1), segment.start + LAST_WORD_MAX_SECONDS * self.frame_rate)
        return self._close(segment, max(end, Fraction(segment.start)))

    def _time(self, step: Fraction) -> float:
        return float(max(Fraction(0), step / self.frame_rate - self.time_offset))

    def _close(self, segment: _OpenSegment, end: Fraction) -> list[Word]:
        """Timed words of ``segment`` ending at step ``end``."""
        if not segment.ids:
            return []
        texts = self.tokenizer.decode(segment.ids).split()
        if not texts:
            return []
        first_piece = self.tokenizer.id_to_piece(segment.ids[0])
        lead = " " if first_piece.startswith(WORD_START_MARK) else ""
        probabilities = self._word_probabilities(segment, len(texts))
        words = []
        running = Fraction(segment.start)
        for index, text in enumerate(texts):
            if index == len(texts) - 1:
                word_end = end
            else:
                word_end = min(running + len(self.tokenizer.encode(text)), end)
            spaced = (lead if index == 0 else " ") + text
            words.append(Word(spaced, self._time(running), self._time(word_end), probabilities[index]))
            running = word_end
        return self._with_logprobs(segment, words)

    def _with_logprobs(self, segment: _OpenSegment, words: list[Word]) -> list[Word]:
        """Each word with its text tokens' log-probabilities (per ``▁``-group; else all on the first word, so that a
        segment's words still hold each token once)."""
        if not segment.logprobs or any(value is None for value in segment.logprobs):
            return words
        values = [float(value) for value in segment.logprobs if value is not None]
        groups = self._piece_groups(segment.ids)
        if len(groups) != len(words):
            groups = [(0, len(values))] + [(len(values), len(values))] * (len(words) - 1)
        return [replace(word, token_logprobs=tuple(values[a:b])) for word, (a, b) in zip(words, groups)]

    def _word_probabilities(self, segment: _OpenSegment, n_words: int) -> list[float | None]:
        """Mean token probability per word (per ``▁``-group, else the segment mean)."""
        probabilities = segment.probabilities
        if any(p is None for p in probabilities):
            return [None] * n_words
        known = [float(p) for p in probabilities if p is not None]
        groups = self._piece_groups(segment.ids)
        if len(groups) == n_words:
            return [_mean(known[a:b]) for a, b in groups]
        return [_mean(known)] * n_words

    def _piece_groups(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """``[start, stop)`` index ranges of ``ids`` that start with a ``▁`` piece."""
        starts = [0] + [i for i in range(1, len(ids)) if self.tokenizer.id_to_piece(ids[i]).startswith(WORD_START_MARK)]
        return list(zip(starts, starts[1:] + [len(ids)]))


def _exact(value: Fraction | float) -> Fraction:
    """A float is read as the decimal it prints as (3.54 is 354/100, not its binary value)."""
    return value if isinstance(value, Fraction) else Fraction(repr(float(value)))


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return math.fsum(items) / len(items)


def tokens_to_words(
    tokens: Sequence[int],
    tokenizer: TextTokenizer,
    *,
    end_of_padding_id: int,
    pad_id: int,
    eos_id: int,
    time_offset_seconds: Fraction | float,
    frame_rate: Fraction | float = FRAME_RATE,
    first_step: int = 0,
) -> list[Word]:
    """All words of a whole token sequence (``tokens[i]`` is step ``first_step + i``).

    Identical to feeding the tokens one by one to ``WordAssembler`` and calling ``finish``.
    """
    assembler = WordAssembler(
        tokenizer,
        end_of_padding_id=end_of_padding_id,
        pad_id=pad_id,
        eos_id=eos_id,
        time_offset_seconds=time_offset_seconds,
        frame_rate=frame_rate,
    )
    words: list[Word] = []
    for index, token in enumerate(tokens):
        words.extend(assembler.push(first_step + index, int(token)))
    if tokens:
        words.extend(assembler.finish(first_step + len(tokens) - 1))
    return words
