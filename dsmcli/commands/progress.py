"""Per-input progress bars on stderr (Rich), shown only when asked (default: stderr is a terminal)."""

from __future__ import annotations

from types import TracebackType

from dsmcli.constants import SAMPLE_RATE


def _known_duration(source: str) -> float | None:
    try:
        import soundfile

        return float(soundfile.info(source).duration)
    except Exception:  # unknown length (stdin, mic, ffmpeg formats): an open-ended bar
        return None


class ProgressDisplay:
    """``update(name, samples_done)`` moves the bar of input ``name`` (seconds of audio processed)."""

    def __init__(self, enabled: bool, sources: list[str]) -> None:
        self.enabled = enabled
        self._sources = sources
        self._progress = None
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "ProgressDisplay":
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      TextColumn("{task.completed:.1f}/{task.total:.1f} s"), TimeElapsedColumn(),
                                      transient=False)
            self._progress.__enter__()
            for source in self._sources:
                self._tasks[source] = self._progress.add_task(source, total=_known_duration(source))
        return self

    def update(self, name: str, samples: int) -> None:
        if self._progress is not None and name in self._tasks:
            self._progress.update(self._tasks[name], completed=samples / SAMPLE_RATE)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
