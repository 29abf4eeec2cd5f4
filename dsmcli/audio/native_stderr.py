"""Keep a C decoder's chatter off the user's terminal.

libmpg123 (inside libsndfile) prints lines such as ``Note: Illegal Audio-MPEG-Header ...`` or
``[src/libmpg123/layer3.c:...] error: dequantization failed!`` straight to file descriptor 2 on
damaged MP3s, bypassing ``sys.stderr``. ``DecoderStderr`` routes fd 2 into a temporary file around
each decoder call, counts and drops the decoder's lines, and writes anything else (another thread's
output, e.g. a progress bar) back to the real stderr, so the command's own one-line messages stay the
only thing the user sees.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from types import TracebackType
from typing import IO

STDERR_FD = 2
DECODER_LINE = re.compile(rb"^(Note: |Warning: |\[src/libmpg123/)")


class DecoderStderr:
    """Reusable context manager: while inside, fd 2 writes are captured; on leaving, decoder lines are
    counted in ``dropped`` and the rest is replayed to stderr. Not for concurrent use from two threads."""

    def __init__(self) -> None:
        self.dropped = 0
        self._capture: IO[bytes] | None = None
        self._saved: int | None = None

    def __enter__(self) -> DecoderStderr:
        _flush_python_stderr()
        if self._capture is None:
            self._capture = tempfile.TemporaryFile()
        self._saved = os.dup(STDERR_FD)
        os.dup2(self._capture.fileno(), STDERR_FD)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        _flush_python_stderr()
        saved, self._saved = self._saved, None
        if saved is None or self._capture is None:
            return
        os.dup2(saved, STDERR_FD)
        os.close(saved)
        self._capture.seek(0)
        data = self._capture.read()
        self._capture.seek(0)
        self._capture.truncate()
        if data:
            self._replay(data)

    def _replay(self, data: bytes) -> None:
        kept = []
        for line in data.splitlines(keepends=True):
            if DECODER_LINE.match(line):
                self.dropped += 1
            else:
                kept.append(line)
        if kept:
            os.write(STDERR_FD, b"".join(kept))

    def close(self) -> None:
        """Release the temporary file (idempotent)."""
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.close()


def _flush_python_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # closed or replaced stderr: nothing buffered to lose
        pass
