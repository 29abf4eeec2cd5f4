"""Drive several writers from one event stream, with segmentation in between."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from dsmcli.outputs.base import TranscriptWriter
from dsmcli.results import EndOfTurn, Segment, TranscriptEvent
from dsmcli.outputs.segments import SegmentBuilder, SegmentOptions


class TranscriptOutput:
    """Feeds words / end-of-turn events to every writer and closed segments after them.

    Use as a context manager: on leaving (also on Ctrl-C or an error) the open segment is
    closed and every writer is closed, so what was recognised is never lost.
    """

    def __init__(self, writers: Sequence[TranscriptWriter], segments: SegmentOptions = SegmentOptions()) -> None:
        self.writers = list(writers)
        self._builder = SegmentBuilder(segments)
        self.closed = False

    def push(self, event: TranscriptEvent) -> list[Segment]:
        """Write ``event`` and the segments it closes, in stream order; return those segments.

        A segment closed *before* a word (pause, length limit) is written before the word, and the
        segment an end of turn closes is written before the end of turn, so a live writer (TXT)
        always sees a segment's words, then the segment, then what follows it.
        """
        if isinstance(event, EndOfTurn):
            closed = self._write_segments(self._builder.end_turn())
            for writer in self.writers:
                writer.write_end_of_turn(event)
            return closed
        closed = self._write_segments(self._builder.close_before(event))
        for writer in self.writers:
            writer.write_word(event)
        return closed + self._write_segments(self._builder.add(event))

    def close(self, duration: float | None = None, *, interrupted: bool = False) -> list[Segment]:
        """Close the last segment and all writers (each even if another fails); idempotent."""
        if self.closed:
            return []
        self.closed = True
        try:
            return self._write_segments(self._builder.finish())
        finally:
            self._close_writers(duration, interrupted)

    def _write_segments(self, segments: list[Segment]) -> list[Segment]:
        for segment in segments:
            for writer in self.writers:
                writer.write_segment(segment)
        return segments

    def _close_writers(self, duration: float | None, interrupted: bool) -> None:
        error: BaseException | None = None
        for writer in self.writers:
            try:
                writer.close(duration, interrupted=interrupted)
            except BaseException as caught:  # close the others, then re-raise the first
                error = error or caught
        if error is not None:
            raise error

    def __enter__(self) -> TranscriptOutput:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(interrupted=exc is not None)
