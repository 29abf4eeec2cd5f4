"""The ``dsmcli`` logger: how library code reports what a user should see but is not an error it raises (a native
kernel being built or falling back to torch, a failure inside the server's step loop).

Library code (layers 0-5, docs/ARCHITECTURE.md) never prints; it calls ``get_logger(__name__)``. By default the
``dsmcli`` logger writes its records to the *current* ``sys.stderr`` as the CLI's one-line messages
(``dsm: building ...``, ``dsm: warning: ...``, ``dsm: error: ...``) and does not propagate to the root logger, so
they appear the same under ``dsm`` and in a plain Python program (like huggingface_hub's and transformers'
library loggers). An application changes that with the standard API, e.g.
``logging.getLogger("dsmcli").setLevel(logging.ERROR)`` to silence the notices, or
``logging.getLogger("dsmcli").propagate = True`` plus removing :data:`HANDLER` to route them to its own handlers.
"""

from __future__ import annotations

import logging
import sys

ROOT = "dsmcli"
PREFIXES = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}


class CliFormatter(logging.Formatter):
    """``dsm: <message>`` for notices, ``dsm: warning: ...`` / ``dsm: error: ...`` above."""

    def format(self, record: logging.LogRecord) -> str:
        return f"dsm: {PREFIXES.get(record.levelno, '')}{record.getMessage()}"


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (pytest's capture, a redirected stream)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


HANDLER = StderrHandler()
HANDLER.setFormatter(CliFormatter())
_root = logging.getLogger(ROOT)
if not _root.handlers:
    _root.addHandler(HANDLER)
    _root.setLevel(logging.INFO)
    _root.propagate = False


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (a child of ``dsmcli``: it uses the handler above)."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")
