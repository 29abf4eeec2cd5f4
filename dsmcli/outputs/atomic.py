"""Outputs written under a temporary name in the same directory and renamed when complete.

A file being written is ``<dir>/.<name>.partial-<pid>``; closing it flushes, fsyncs and renames it to
``<dir>/<name>`` (``os.replace``: atomic on one filesystem), so a killed run never leaves a partial file
under a final name, and a file under its final name is complete. ``discard()`` drops a temporary instead
(an input that failed or was interrupted in a resumable run). Opening a temporary removes the leftovers of
earlier killed runs for the same output (``.<name>.partial-*``): only one task writes a given output.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from dsmcli.errors import OutputError

PARTIAL_MARK = ".partial-"


def temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{PARTIAL_MARK}{os.getpid()}")


def remove_stale(final: Path) -> None:
    """Delete temporaries of ``final`` left by killed runs (any pid but ours)."""
    mine = temp_path(final)
    for stale in final.parent.glob(f".{final.name}{PARTIAL_MARK}*"):
        if stale != mine:
            stale.unlink(missing_ok=True)


class AtomicTarget:
    """The temporary of one final path: ``commit()`` renames it into place, ``discard()`` removes it."""

    def __init__(self, final: str | os.PathLike[str]) -> None:
        self.final = Path(final)
        self.temp = temp_path(self.final)
        self.discarded = False
        remove_stale(self.final)

    def commit(self) -> None:
        if self.discarded:
            return
        try:
            os.replace(self.temp, self.final)
        except OSError as error:
            raise OutputError(f"cannot write {self.final}: {error.strerror or error}") from error

    def discard(self) -> None:
        self.discarded = True
        self.temp.unlink(missing_ok=True)


def _sync(stream: io.IOBase) -> None:
    stream.flush()
    os.fsync(stream.fileno())


class _Committed:
    """What both atomic files share: the final name, ``discard()``, and ``close()`` that commits (after fsync)."""

    target: AtomicTarget

    @property
    def name(self) -> str:  # messages name the final file
        return str(self.target.final)

    def discard(self) -> None:
        self.target.discard()

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self.target.discarded:
                _sync(self)
        finally:
            super().close()
        self.target.commit()


class AtomicText(_Committed, io.TextIOWrapper):
    """A UTF-8 text file at ``final``, written to its temporary; ``close()`` commits it."""

    def __init__(self, final: str | os.PathLike[str]) -> None:
        self.target = AtomicTarget(final)
        super().__init__(io.BufferedWriter(io.FileIO(self.target.temp, "w")), encoding="utf-8")


class AtomicBinary(_Committed, io.BufferedRandom):
    """A binary file at ``final`` (seekable: a WAV header is patched in place), written to its temporary."""

    def __init__(self, final: str | os.PathLike[str]) -> None:
        self.target = AtomicTarget(final)
        super().__init__(io.FileIO(self.target.temp, "w+"))


def open_text(path: str | os.PathLike[str]) -> AtomicText:
    """``open(path, "w", encoding="utf-8")``, atomically."""
    return AtomicText(path)


def open_binary(path: str | os.PathLike[str]) -> AtomicBinary:
    """``open(path, "w+b")``, atomically."""
    return AtomicBinary(path)


def discard(stream: object) -> None:
    """Drop ``stream``'s temporary if it is an atomic file (other streams, e.g. stdout, are left alone)."""
    if isinstance(stream, (AtomicText, AtomicBinary)):
        stream.discard()
