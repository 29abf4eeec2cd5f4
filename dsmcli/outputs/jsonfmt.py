"""JSON (whisper's result schema, written at close) and JSONL (Kyutai's event names, live).

JSON keys are whisper's. ``avg_logprob`` is the mean log-probability of the segment's text
tokens (``null`` when they are unknown, as for the words of ``dsm speak``); ``no_speech_prob``
is ``null`` (DSM has no such figure); ``seek`` 0 and ``tokens`` []; ``temperature`` is the
run's; ``compression_ratio`` is computed as whisper does. A word's ``probability`` is
``null`` when the model's token probabilities were not given. Times are rounded to 2
decimals, as whisper rounds word times. Top-level ``model``, ``duration`` and the schema
``version`` are added.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

from dsmcli.outputs.base import TranscriptWriter
from dsmcli.results import EndOfTurn, Segment, Transcript, Word

JSON_SCHEMA_VERSION = "1.0"
JSON_TIME_DECIMALS = 2  # whisper rounds word times to 10 ms
JSONL_TIME_DECIMALS = 3  # the event stream keeps millisecond precision


def compression_ratio(text: str) -> float:
    """whisper's gzip compression ratio of the UTF-8 text (high means repetitive)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def average_logprob(segment: Segment) -> float | None:
    """Mean log-probability of the segment's text tokens (whisper's ``avg_logprob``), or None if unknown."""
    values = [value for word in segment.words for value in word.token_logprobs]
    return math.fsum(values) / len(values) if values else None


def _word_dict(word: Word) -> dict[str, Any]:
    return {
        "word": word.text,
        "start": round(word.start, JSON_TIME_DECIMALS),
        "end": round(word.end, JSON_TIME_DECIMALS),
        "probability": word.probability,
    }


def segment_to_dict(segment: Segment, temperature: float = 0.0) -> dict[str, Any]:
    """One segment in whisper's schema."""
    return {
        "id": segment.id,
        "seek": 0,
        "start": round(segment.start, JSON_TIME_DECIMALS),
        "end": round(segment.end, JSON_TIME_DECIMALS),
        "text": segment.text,
        "tokens": [],
        "temperature": temperature,
        "avg_logprob": average_logprob(segment),
        "compression_ratio": compression_ratio(segment.text),
        "no_speech_prob": None,
        "words": [_word_dict(word) for word in segment.words],
    }


def transcript_to_dict(transcript: Transcript, temperature: float = 0.0) -> dict[str, Any]:
    """The whole transcript in whisper's result schema, plus ``model``/``duration``/``version``."""
    return {
        "text": transcript.text,
        "segments": [segment_to_dict(segment, temperature) for segment in transcript.segments],
        "language": transcript.language,
        "model": transcript.model,
        "duration": transcript.duration,
        "version": JSON_SCHEMA_VERSION,
    }


class JsonWriter(TranscriptWriter):
    """Collects segments and writes the JSON document at ``close`` (also on Ctrl-C).

    With ``options.end_of_turn`` (the run detects ends of turn), every segment gets an
    ``end_of_turn`` flag (true for the last segment before each end of turn) and the document an
    ``end_of_turns`` list of ``{"time", "probability"}``.
    """

    extension = "json"

    def _start(self) -> None:
        self._segments: list[Segment] = []
        self._turns: list[EndOfTurn] = []
        self._turn_segments: set[int] = set()  # ids of segments that end a turn
        self._segments_at_turn = 0

    def write_segment(self, segment: Segment) -> None:
        self._segments.append(segment)

    def write_end_of_turn(self, event: EndOfTurn) -> None:
        self._turns.append(event)
        if len(self._segments) > self._segments_at_turn:  # a segment came since the last turn end
            self._turn_segments.add(self._segments[-1].id)
        self._segments_at_turn = len(self._segments)

    def _finish(self, duration: float | None, interrupted: bool) -> None:
        transcript = Transcript.from_segments(
            self._segments, language=self.options.language, model=self.options.model, duration=duration
        )
        document = transcript_to_dict(transcript, self.options.temperature)
        if self.options.end_of_turn:
            for segment in document["segments"]:
                segment["end_of_turn"] = segment["id"] in self._turn_segments
            document["end_of_turns"] = [
                {"time": round(turn.time, JSON_TIME_DECIMALS), "probability": turn.probability} for turn in self._turns
            ]
        self._emit(json.dumps(document))


def _seconds(value: float) -> float:
    return round(value, JSONL_TIME_DECIMALS)


class JsonlWriter(TranscriptWriter):
    """One JSON event per line, flushed at once, with Kyutai's streaming message names.

    ``Word`` (text without its leading space, ``start_time``), ``EndWord`` (``stop_time``),
    ``EndOfTurn`` (``time``, ``probability``) and a last ``Done`` (``duration``, ``words``,
    ``interrupted``).
    """

    extension = "jsonl"

    def _start(self) -> None:
        self._words = 0

    def _event(self, payload: dict[str, Any]) -> None:
        self._emit(json.dumps(payload, ensure_ascii=False) + "\n")

    def write_word(self, word: Word) -> None:
        self._words += 1
        self._event({"type": "Word", "text": word.text.strip(), "start_time": _seconds(word.start)})
        self._event({"type": "EndWord", "stop_time": _seconds(word.end)})

    def write_end_of_turn(self, event: EndOfTurn) -> None:
        self._event({"type": "EndOfTurn", "time": _seconds(event.time), "probability": event.probability})

    def _finish(self, duration: float | None, interrupted: bool) -> None:
        self._event({"type": "Done", "duration": duration, "words": self._words, "interrupted": interrupted})
