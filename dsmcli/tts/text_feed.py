"""Text in for ``dsm speak`` / ``dsm dialog``: strict UTF-8, whole files, and text streamed from stdin.

An :class:`EntryFeed` gives the synthesis loop the entries of one input as they become known:
:class:`FixedEntries` all at once (a file, ``--text``, a dialog script), :class:`StreamingEntries` as text arrives
on a pipe (``llm ... | dsm speak -``): a reader thread queues the bytes, the loop polls without blocking and
waits only when no slot can step; :class:`PulledEntries` from an iterable of text pieces, pulled one per poll
in the caller's thread (the generator API).
"""

from __future__ import annotations

import codecs
import os
import queue
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from dsmcli.errors import InputError
from dsmcli.tts.script import Entry, EntryStream

STDIN = "-"
STDIN_NAME = "<stdin>"
BOM = "\ufeff"
READ_BYTES = 4096  # small reads: text is passed on as soon as it arrives
_END = None  # queue sentinel: end of the stream


def _utf8_error(name: str, data: bytes, offset: int, index: int) -> InputError:
    return InputError(f"{name}: not valid UTF-8 text (byte 0x{data[index]:02x} at offset {offset})")


def decode_utf8(data: bytes, name: str) -> str:
    """Strict UTF-8 (a leading BOM is dropped); InputError naming the offset of the first invalid byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _utf8_error(name, data, exc.start, exc.start) from None
    return text.removeprefix(BOM)


def read_text(source: str, stdin: BinaryIO | None = None) -> str:
    """The whole text of a file, or of stdin (``-``). InputError when unreadable or not UTF-8."""
    if source == STDIN:
        stream = stdin if stdin is not None else sys.stdin.buffer
        return decode_utf8(stream.read(), STDIN_NAME)
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{source}: no such file" if not path.exists() else f"{source}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{source}: cannot read ({exc.strerror or exc})") from None
    return decode_utf8(data, source)


class Utf8Pieces:
    """Incremental strict UTF-8 decoding that reports the absolute byte offset of an invalid byte."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._consumed = 0  # bytes fed before the current call, minus those still buffered
        self._started = False

    def decode(self, data: bytes, final: bool = False) -> str:
        buffered = self._decoder.getstate()[0]
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            joined = buffered + data
            raise _utf8_error(self.name, joined, self._consumed - len(buffered) + exc.start, exc.start) from None
        self._consumed += len(data)
        if not self._started and text:
            self._started = True
            text = text.removeprefix(BOM)
        return text


class EntryFeed(Protocol):
    """The entries of one input, as they become known."""

    name: str

    def poll(self) -> tuple[list[Entry], bool]:
        """Entries that arrived since the last call (never blocks), and whether the text is complete."""
        ...

    def wait(self, timeout: float) -> bool:
        """Block until more text may have arrived (or ``timeout`` seconds); False when the feed cannot wait itself
        (its text is pushed: the scheduler waits for the push)."""
        ...


class FixedEntries:
    """A whole script known in advance."""

    def __init__(self, name: str, entries: list[Entry]) -> None:
        self.name = name
        self._entries: list[Entry] | None = list(entries)

    def poll(self) -> tuple[list[Entry], bool]:
        entries, self._entries = self._entries or [], None
        return entries, True

    def wait(self, timeout: float) -> bool:
        return False  # never waits: all the text is there


def _raw_reader(stream: BinaryIO):
    """``os.read`` on the file descriptor when there is one: a daemon thread blocked in a buffered ``read1`` holds
    the buffer's lock, and Python aborts at exit (Ctrl-C) when another thread needs it."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return getattr(stream, "read1", stream.read)
    return lambda size: os.read(fd, size)


class StdinReader:
    """Reads a binary stream in a daemon thread; ``get`` returns the bytes queued so far (None = end)."""

    def __init__(self, stream: BinaryIO, read_bytes: int = READ_BYTES) -> None:
        self._stream = stream
        self._read = _raw_reader(stream)
        self._size = read_bytes
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="dsm-text-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while data := self._read(self._size):
                self._queue.put(data)
        except (OSError, ValueError) as exc:  # closed or broken pipe: report it to the loop
            self._queue.put(exc)
        self._queue.put(_END)

    def get(self, timeout: float | None = 0.0) -> list[bytes | BaseException | None]:
        """Everything queued now; with ``timeout`` > 0 wait that long for the first item. Never raises Empty."""
        items: list[bytes | BaseException | None] = []
        try:
            items.append(self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait())
            while True:
                items.append(self._queue.get_nowait())
        except queue.Empty:
            return items


class StreamingEntries:
    """Entries of text arriving on a binary stream, word by word (see :class:`~dsmcli.tts.script.EntryStream`).

    A word is complete once whitespace follows it; the end of the stream flushes the last one. InputError when
    the bytes are not UTF-8 or when the stream ends without any text.
    """

    def __init__(self, name: str, reader: StdinReader, entries: EntryStream) -> None:
        self.name = name
        self._reader = reader
        self._text = Utf8Pieces(name)
        self._entries = entries
        self._pending: list[bytes | BaseException | None] = []
        self._count = 0
        self._closed = False

    def poll(self) -> tuple[list[Entry], bool]:
        if self._closed:
            return [], True
        items, self._pending = self._pending + self._reader.get(), []
        out: list[Entry] = []
        for item in items:
            if isinstance(item, BaseException):
                raise InputError(f"{self.name}: cannot read ({item})")
            if item is _END:
                out += self._entries.feed(self._text.decode(b"", final=True)) + self._entries.close()
                self._closed = True
                break
            out += self._entries.feed(self._text.decode(item))
        self._count += len(out)
        if self._closed and self._count == 0:
            raise InputError(f"{self.name}: no text to speak")
        return out, self._closed

    def wait(self, timeout: float) -> bool:
        if not self._closed and not self._pending:
            self._pending = self._reader.get(timeout)
        return True


class PulledEntries:
    """Entries of text pieces pulled from an iterable (e.g. an LLM's tokens), one piece per :meth:`poll`, in the
    caller's thread; a word is complete once whitespace follows it. InputError when there is no text at all."""

    def __init__(self, name: str, pieces: Iterable[str], entries: EntryStream) -> None:
        self.name = name
        self._pieces: Iterator[str] = iter(pieces)
        self._entries = entries
        self._count = 0

    def poll(self) -> tuple[list[Entry], bool]:
        if self._entries.closed:
            return [], True
        piece = next(self._pieces, None)
        out = self._entries.close() if piece is None else self._entries.feed(str(piece))
        self._count += len(out)
        if self._entries.closed and self._count == 0:
            raise InputError(f"{self.name}: no text to speak")
        return out, self._entries.closed

    def wait(self, timeout: float) -> bool:
        return True  # the next poll pulls the next piece: nothing to wait for
