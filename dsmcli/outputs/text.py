"""Plain-text formats: TXT (one segment per line) and TSV (integer milliseconds)."""

from __future__ import annotations

from dsmcli.outputs.base import TranscriptWriter
from dsmcli.outputs.timestamps import milliseconds
from dsmcli.results import Segment, Word


class TxtWriter(TranscriptWriter):
    """One stripped segment text per line (whisper ``WriteTXT``), written live.

    Each word is written (and flushed) as soon as it is final and the line ends with its segment,
    so ``dsm transcribe talk.wav`` shows the text as it is recognised; the bytes are those of
    writing each stripped segment text at once. Segments given without their words first are
    written whole.
    """

    extension = "txt"

    def _start(self) -> None:
        self._line = ""  # what was written of the open segment's line

    def write_word(self, word: Word) -> None:
        piece = word.text if self._line else word.text.lstrip()
        if piece:
            self._line += piece
            self._emit(piece)

    def write_segment(self, segment: Segment) -> None:
        text, line = segment.text.strip(), self._line.rstrip()
        self._line = ""
        if text.startswith(line):
            self._emit(text[len(line):] + "\n")
        else:  # words that did not belong to this segment were written: keep them on their own line
            self._emit("\n" + text + "\n")


class TsvWriter(TranscriptWriter):
    """``start<TAB>end<TAB>text`` with integer milliseconds (whisper ``WriteTSV``)."""

    extension = "tsv"

    def _start(self) -> None:
        self._emit("start\tend\ttext\n")

    def write_segment(self, segment: Segment) -> None:
        text = segment.text.strip().replace("\t", " ")
        self._emit(f"{milliseconds(segment.start)}\t{milliseconds(segment.end)}\t{text}\n")
