"""Where writers write: output file, output directory (``<dir>/<stem>.<ext>``) or stdout."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TextIO, cast

from dsmcli.errors import OutputError, UsageError
from dsmcli.outputs.base import TranscriptWriter, WriterOptions
from dsmcli.outputs.registry import DEFAULT_FORMAT, WRITERS, format_for_path, resolve_formats

STDOUT = "-"


def is_directory_target(output: Path | str) -> bool:
    """``output`` names a directory: it exists as one, or its spelling ends with a path separator.

    Anything else (``result``, ``talk.srt``) is a file name, even without an extension."""
    text = str(output)
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


def output_paths(formats: list[str], output: Path | str | None, stem: str) -> dict[str, Path | None]:
    """Format → path (``None`` = stdout) for ``output``.

    ``formats`` are the ones asked for (``-f``); empty means "infer": a file name's extension
    (``x.srt`` → srt), else ``txt``. ``None``: the current directory. ``-``: stdout (one format
    only). A directory (see ``is_directory_target``): ``<dir>/<stem>.<ext>`` for each format.
    Otherwise a file, which takes exactly one format, and whose known extension must match it.
    """
    if output is not None and str(output) == STDOUT:
        names = resolve_formats(formats or [DEFAULT_FORMAT])
        if len(names) != 1:
            raise UsageError("only one output format can be written to stdout")
        return {names[0]: None}
    if output is None or is_directory_target(output):
        folder = Path(".") if output is None else Path(output)
        return {name: folder / f"{stem}.{name}" for name in resolve_formats(formats or [DEFAULT_FORMAT])}
    target = Path(output)
    return {file_format(formats, target): target}


def file_format(formats: list[str], target: Path) -> str:
    """The one format of the output file ``target``: ``formats`` (one), else its extension's, else txt."""
    named = format_for_path(target.name)
    if not formats:
        return named or DEFAULT_FORMAT
    names = resolve_formats(formats)
    if len(names) != 1:
        raise UsageError(f"{target} is a file name; several formats need an output directory "
                         f"(-o {target}{os.sep} writes <dir>/<input>.<ext>)")
    if named is not None and named != names[0]:
        raise UsageError(f"-o {target} names the {named} format but -f {names[0]} was asked: "
                         f"use -o {target.with_suffix('.' + names[0]).name}, or leave out -f")
    return names[0]


def _check_writable(paths: list[Path], force: bool) -> None:
    """Refuse existing outputs (unless ``force``) before creating any directory."""
    for path in paths:
        if path.is_dir():
            raise OutputError(f"{path} is a directory")
        if path.exists() and not force:
            raise OutputError(f"{path} exists (use --force to overwrite)")
    for parent in dict.fromkeys(path.parent for path in paths):
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"cannot create directory {parent}: {error.strerror or error}") from error
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to directory {parent}: permission denied")


class _StdoutText(io.TextIOBase):
    """stdout as UTF-8 text whatever the locale; closing it leaves the real stdout open."""

    name = "<stdout>"

    def __init__(self, buffer: BinaryIO) -> None:
        super().__init__()
        self._buffer = buffer

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        sys.stdout.flush()  # keep order with anything printed through sys.stdout
        self._buffer.write(text.encode("utf-8"))
        return len(text)

    def flush(self) -> None:
        if not self.closed:
            self._buffer.flush()


def _stdout_text() -> TextIO:
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        return sys.stdout
    return cast(TextIO, _StdoutText(buffer))


def open_writers(
    formats: list[str],
    output: Path | str | None,
    stem: str,
    force: bool = False,
    options: WriterOptions = WriterOptions(),
    opener: Callable[[Path], TextIO] | None = None,
) -> list[TranscriptWriter]:
    """Open one writer per format (see ``output_paths``); nothing is created if any check fails.

    Raises ``OutputError`` (an output exists without ``force``, a directory is unwritable)
    or ``UsageError`` (unknown format, several formats to one file or to stdout). ``opener(path)`` opens a
    file (default ``open(path, "w", encoding="utf-8")``; corpus runs pass ``dsmcli.outputs.atomic.open_text``).
    """
    paths = output_paths(formats, output, stem)
    _check_writable([path for path in paths.values() if path is not None], force)
    writers: list[TranscriptWriter] = []
    try:
        for name, path in paths.items():
            writer_class = WRITERS[name]
            if path is None:
                writers.append(writer_class(_stdout_text(), options, name="<stdout>"))
                continue
            try:
                stream = opener(path) if opener is not None else open(path, "w", encoding="utf-8")
            except OSError as error:
                raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
            writers.append(writer_class(stream, options, name=str(path)))
    except BaseException:
        for writer in writers:
            writer.stream.close()
        raise
    return writers
