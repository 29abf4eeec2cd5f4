"""The writer interface every output format implements, and the options they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, TextIO

from dsmcli.errors import OutputError
from dsmcli.results import EndOfTurn, Segment, Word
from dsmcli.outputs.segments import SubtitleOptions


@dataclass(frozen=True)
class WriterOptions:
    """What writers need beyond the events: run metadata and the subtitle layout."""

    model: str = ""
    language: str | None = None
    temperature: float = 0.0
    subtitles: SubtitleOptions = field(default_factory=SubtitleOptions)
    end_of_turn: bool = False  # the run detects ends of turn: JSON marks them (see JsonWriter)


class TranscriptWriter:
    """Writes one transcript in one format to a text stream, as events arrive.

    Events come in stream order: every ``write_word`` / ``write_end_of_turn`` as the model
    produces it, and ``write_segment`` once a segment is closed (after its words). Formats
    that can be appended to write and flush as they go, so a killed process leaves a valid
    file up to the last flush. ``close`` finishes the file (JSON is written there) and must
    run even on Ctrl-C: use the writer as a context manager.
    """

    extension: ClassVar[str]

    def __init__(
        self,
        stream: TextIO,
        options: WriterOptions = WriterOptions(),
        *,
        name: str | None = None,
        owns_stream: bool = True,
    ) -> None:
        self.stream = stream
        self.options = options
        self.name = name or getattr(stream, "name", "<stream>")
        self.owns_stream = owns_stream
        self.closed = False
        self._start()

    def _start(self) -> None:
        """Set up per-file state and write what precedes the first event (headers)."""

    def write_word(self, word: Word) -> None:
        """A final word, as soon as it is known."""

    def write_end_of_turn(self, event: EndOfTurn) -> None:
        """An end-of-turn prediction."""

    def write_segment(self, segment: Segment) -> None:
        """A closed segment (its words were already given to ``write_word``)."""

    def _finish(self, duration: float | None, interrupted: bool) -> None:
        """Write what comes after the last event."""

    def close(self, duration: float | None = None, *, interrupted: bool = False) -> None:
        """Finish and close the output (idempotent). ``duration``: input seconds, if known."""
        if self.closed:
            return
        self.closed = True
        try:
            self._finish(duration, interrupted)
        finally:
            self._release()

    def _release(self) -> None:
        try:
            if self.owns_stream:
                self.stream.close()
            else:
                self.stream.flush()
        except OSError as error:
            raise OutputError(f"cannot write {self.name}: {error.strerror or error}") from error

    def _emit(self, text: str) -> None:
        """Append ``text`` and flush it to the OS."""
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError as error:
            raise OutputError(f"cannot write {self.name}: {error.strerror or error}") from error

    def __enter__(self) -> TranscriptWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(interrupted=exc is not None)
