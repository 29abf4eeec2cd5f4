"""What the run modules report per input (opened, a word, done, failed) → manifest rows."""

from __future__ import annotations

import time
from collections.abc import Sequence

from dsmcli.errors import EXIT_RUNTIME
from dsmcli.corpus.manifest import FAILED, OK, SKIPPED, Manifest, ManifestRow
from dsmcli.results import Word


class Recorder:
    """Turns per-input events into ``ManifestRow``s: written to ``manifest`` (if any) and kept in ``rows``.

    ``unit`` is ``"words"`` (transcribe: words recognised) or ``"characters"`` (speak: characters of text spoken).
    Wall seconds run from an input's start (its slot opened it) to its end; inputs in batch slots overlap."""

    def __init__(self, model: str, manifest: Manifest | None = None, unit: str = "words") -> None:
        self.model, self.manifest, self.unit = model, manifest, unit
        self.rows: list[ManifestRow] = []
        self._started: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self.exit_codes: dict[str, int] = {}  # failed input -> its error's exit code

    def opened(self, path: str) -> None:
        self._started.setdefault(path, time.monotonic())
        self._counts.setdefault(path, 0)

    def event(self, path: str, event: object) -> None:
        if isinstance(event, Word):
            self._counts[path] = self._counts.get(path, 0) + 1

    def count(self, path: str, amount: int) -> None:
        self._counts[path] = self._counts.get(path, 0) + amount

    def finished(self, path: str, audio_seconds: float | None, outputs: Sequence[str]) -> None:
        self._write(path, OK, None, audio_seconds, list(outputs))

    def failed(self, path: str, error: object, exit_code: int | None = None) -> None:
        self.exit_codes[path] = exit_code if exit_code is not None else getattr(error, "exit_code", EXIT_RUNTIME)
        self._write(path, FAILED, str(error), None, [])

    def skipped(self, path: str, outputs: Sequence[str]) -> None:
        self._write(path, SKIPPED, None, None, list(outputs), wall=0.0)

    def _write(self, path: str, status: str, error: str | None, seconds: float | None, outputs: list[str],
               wall: float | None = None) -> None:
        started = self._started.pop(path, None)
        if wall is None:
            wall = 0.0 if started is None else time.monotonic() - started
        row = ManifestRow(path=path, status=status, model=self.model, error=error, audio_seconds=seconds,
                          outputs=outputs, wall_seconds=wall)
        count = self._counts.pop(path, 0) if status == OK else None
        setattr(row, self.unit, count)
        self.add(row)

    def add(self, row: ManifestRow) -> None:
        self.rows.append(row)
        if self.manifest is not None:
            self.manifest.write(row)

    @property
    def failures(self) -> int:
        return sum(row.status == FAILED for row in self.rows)

    def statuses(self) -> dict[str, str]:
        return {row.path: row.status for row in self.rows}


__all__ = ["FAILED", "OK", "SKIPPED", "Recorder"]


class NullRecorder(Recorder):
    """Records nothing (a plain run without ``--manifest``)."""

    def __init__(self) -> None:
        super().__init__(model="")

    def add(self, row: ManifestRow) -> None:
        pass


NULL_RECORDER = NullRecorder()
