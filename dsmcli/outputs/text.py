"""Plain-text formats: TXT (one segment per line) and TSV (integer milliseconds)."""

from __future__ import annotations

from dsmcli.outputs.base import TranscriptWriter
from dsmcli.outputs.timestamps import milliseconds
from dsmcli.results import Segment


class TxtWriter(TranscriptWriter):
    """One stripped segment text per line (whisper ``WriteTXT``)."""

    extension = "txt"

    def write_segment(self, segment: Segment) -> None:
        self._emit(segment.text.strip() + "\n")


class TsvWriter(TranscriptWriter):
    """``start<TAB>end<TAB>text`` with integer milliseconds (whisper ``WriteTSV``)."""

    extension = "tsv"

    def _start(self) -> None:
        self._emit("start\tend\ttext\n")

    def write_segment(self, segment: Segment) -> None:
        text = segment.text.strip().replace("\t", " ")
        self._emit(f"{milliseconds(segment.start)}\t{milliseconds(segment.end)}\t{text}\n")
