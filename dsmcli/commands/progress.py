"""Per-input progress bars on stderr (Rich), shown only when asked (default: stderr is a terminal)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from dsmcli.constants import SAMPLE_RATE


def _known_duration(source: str) -> float | None:
    """Seconds of audio in ``source`` when its header says so; None for stdin, the mic, ffmpeg formats."""
    import os

    import soundfile

    if not os.path.isfile(source):  # libsndfile would read "-" as stdin
        return None
    try:
        return float(soundfile.info(source).duration)
    except (soundfile.LibsndfileError, RuntimeError, OSError):
        return None


class ProgressDisplay:
    """``update(name, samples_done)`` moves the bar of input ``name`` (seconds of audio processed).

    Bars go to stderr, so a transcript printed on stdout is never mixed with them; an input of unknown
    length gets an open-ended bar. Disabled, every call is a no-op."""

    def __init__(self, enabled: bool, sources: list[str]) -> None:
        self.enabled = enabled
        self._sources = sources
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      TextColumn("{task.completed:.1f}/{task.fields[length]} s"), TimeElapsedColumn(),
                                      console=Console(stderr=True), transient=False)
            self._progress.__enter__()
            for source in self._sources:
                total = _known_duration(source)
                length = "?" if total is None else f"{total:.1f}"
                self._tasks[source] = self._progress.add_task(source, total=total, length=length)
        return self

    def update(self, name: str, samples: int) -> None:
        if self._progress is not None and name in self._tasks:
            self._progress.update(self._tasks[name], completed=samples / SAMPLE_RATE)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
