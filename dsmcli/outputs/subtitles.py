"""Subtitle formats: SRT and WebVTT, one cue appended (and flushed) as soon as it is final."""

from __future__ import annotations

from typing import TextIO

from dsmcli.outputs.base import TranscriptWriter, WriterOptions
from dsmcli.outputs.timestamps import format_timestamp
from dsmcli.results import EndOfTurn, Segment
from dsmcli.outputs.segments import Cue, CueBuilder


class SubtitleWriter(TranscriptWriter):
    """Lays segments out as cues (``CueBuilder``) and writes each final cue."""

    always_include_hours: bool
    decimal_marker: str

    def __init__(
        self,
        stream: TextIO,
        options: WriterOptions = WriterOptions(),
        *,
        name: str | None = None,
        owns_stream: bool = True,
    ) -> None:
        self._cues = CueBuilder(options.subtitles)
        self._count = 0
        super().__init__(stream, options, name=name, owns_stream=owns_stream)

    def write_segment(self, segment: Segment) -> None:
        for cue in self._cues.push(segment):
            self._write_cue(cue)

    def write_end_of_turn(self, event: EndOfTurn) -> None:
        """A turn ends: no cue spans it, even when segments are merged into cues."""
        for cue in self._cues.finish():
            self._write_cue(cue)

    def _finish(self, duration: float | None, interrupted: bool) -> None:
        for cue in self._cues.finish():
            self._write_cue(cue)

    def _write_cue(self, cue: Cue) -> None:
        self._count += 1
        self._emit(self._format_cue(self._count, cue))

    def _format_cue(self, number: int, cue: Cue) -> str:
        raise NotImplementedError

    def _timing(self, cue: Cue) -> str:
        start = format_timestamp(cue.start, self.always_include_hours, self.decimal_marker)
        end = format_timestamp(cue.end, self.always_include_hours, self.decimal_marker)
        return f"{start} --> {end}"


class SrtWriter(SubtitleWriter):
    """SubRip: numbered cues from 1, ``HH:MM:SS,mmm`` (whisper ``WriteSRT``)."""

    extension = "srt"
    always_include_hours = True
    decimal_marker = ","

    def _format_cue(self, number: int, cue: Cue) -> str:
        return f"{number}\n{self._timing(cue)}\n{cue.text}\n\n"


class VttWriter(SubtitleWriter):
    """WebVTT: ``WEBVTT`` header, ``[HH:]MM:SS.mmm``, no cue numbers (whisper ``WriteVTT``)."""

    extension = "vtt"
    always_include_hours = False
    decimal_marker = "."

    def _start(self) -> None:
        self._emit("WEBVTT\n\n")

    def _format_cue(self, number: int, cue: Cue) -> str:
        return f"{self._timing(cue)}\n{cue.text}\n\n"
