"""Input expansion (files, directories, ``--glob``, ``--inputs LIST``) and the ``--shard I/N`` split."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from dsmcli.errors import InputError, UsageError

STDIN = "-"
# What a directory holds that `dsm transcribe` takes (libsndfile's formats and common ffmpeg containers).
AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".caf", ".w64",
    ".m4a", ".mp4", ".aac", ".webm", ".mkv", ".mov", ".wma", ".amr",
})
TEXT_EXTENSIONS = frozenset({".txt", ".md"})


@dataclass(frozen=True)
class InputSelection:
    """How the command's inputs were given: positional paths, ``--recursive``, ``--glob``, ``--inputs``."""

    paths: tuple[str, ...] = ()
    recursive: bool = False
    glob: str | None = None
    inputs_list: str | None = None  # a text file with one path per line, or - for stdin

    @property
    def expands(self) -> bool:
        """True when a directory, pattern or list may turn into several inputs."""
        return self.recursive or self.glob is not None or self.inputs_list is not None or any(
            p != STDIN and Path(p).is_dir() for p in self.paths)


def read_list(stream: TextIO, name: str) -> list[str]:
    """Paths of an ``--inputs`` list: one per line; blank lines and lines starting with ``#`` are ignored."""
    try:
        lines = stream.read().splitlines()
    except UnicodeDecodeError as error:
        raise InputError(f"{name}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _list_paths(source: str) -> list[str]:
    if source == STDIN:
        return read_list(sys.stdin, "<stdin>")
    try:
        with open(source, encoding="utf-8") as stream:
            return read_list(stream, source)
    except OSError as error:
        raise InputError(f"--inputs {source}: {error.strerror or error}") from None


def _directory(folder: Path, selection: InputSelection, extensions: frozenset[str]) -> list[str]:
    """The files of ``folder`` (its tree with ``--recursive``) matching ``--glob`` or a known extension,
    sorted; hidden files (and the ``.name.partial-PID`` temporaries of a running job) are left out."""
    if selection.glob is not None:
        found = folder.rglob(selection.glob) if selection.recursive else folder.glob(selection.glob)
    else:
        found = folder.rglob("*") if selection.recursive else folder.iterdir()
    keep = []
    for path in found:
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") for part in relative) or not path.is_file():
            continue
        if selection.glob is None and path.suffix.lower() not in extensions:
            continue
        keep.append(str(path))
    return sorted(keep)


def expand_inputs(selection: InputSelection, extensions: frozenset[str]) -> list[str]:
    """Every input path, in order, each once. A directory gives its files (see ``_directory``); a file or a
    path that does not exist is kept as given (a missing one is reported, as a failed input, by the run);
    ``--glob`` without a directory searches the current directory."""
    given = list(selection.paths)
    if selection.inputs_list is not None:
        given += _list_paths(selection.inputs_list)
    if selection.glob is not None and not any(p != STDIN and Path(p).is_dir() for p in given):
        if not given:
            given = ["."]
    found: list[str] = []
    for path in given:
        if path != STDIN and Path(path).is_dir():
            found += _directory(Path(path), selection, extensions)
        else:
            found.append(path)
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Shard:
    """``--shard I/N``: this task takes the inputs whose path hash is I-1 modulo N (I counts from 1)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, sep, count = text.partition("/")
        try:
            shard = cls(int(index), int(count))
        except ValueError:
            raise UsageError(f"--shard {text!r}: write I/N, e.g. --shard 2/8") from None
        if not sep or not 1 <= shard.index <= shard.count:
            raise UsageError(f"--shard {text!r}: I/N needs 1 <= I <= N")
        return shard

    def takes(self, path: str) -> bool:
        return shard_of(path, self.count) == self.index - 1

    def select(self, paths: Iterable[str]) -> list[str]:
        return [path for path in paths if self.takes(path)]


def shard_of(path: str, count: int) -> int:
    """A stable bucket in ``range(count)`` for ``path`` (SHA-256 of its normalized spelling, as given: the same
    command line on every task of a job array gives the same split, whatever the machine or Python process)."""
    key = os.path.normpath(path).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % count
