"""``--manifest FILE.jsonl``: one JSON line per input as it finishes, appended and flushed line by line.

A line: ``{"path", "status": "ok"|"failed"|"skipped", "error", "audio_seconds", "words" (transcribe) or
"characters" (speak), "outputs", "wall_seconds", "model", "finished"}``, and ``"worker"`` (host:pid) on
Ray. A rerun appends; the last line of a
path is its current state (``read_manifest``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dsmcli.errors import OutputError

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
STATUSES = (OK, FAILED, SKIPPED)


@dataclass
class ManifestRow:
    path: str
    status: str
    model: str
    error: str | None = None
    audio_seconds: float | None = None
    outputs: list[str] = field(default_factory=list)
    wall_seconds: float | None = None
    words: int | None = None  # transcribe
    characters: int | None = None  # speak: characters of text spoken
    finished: str = ""  # UTC time the line was written (ISO 8601)
    worker: str | None = None  # Ray runs: host:pid of the actor that ran it


    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        for unused in ("words", "characters", "worker"):
            if row[unused] is None:
                del row[unused]
        for key in ("audio_seconds", "wall_seconds"):
            if row[key] is not None:
                row[key] = round(row[key], 3)
        return row

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManifestRow:
        return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})


class Manifest:
    """Appends rows to a JSONL file; each line is written, flushed and fsynced as it comes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = open(self.path, "a", encoding="utf-8")
        except OSError as error:
            raise OutputError(f"cannot write manifest {self.path}: {error.strerror or error}") from error

    def write(self, row: ManifestRow) -> None:
        row.finished = row.finished or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            self._stream.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
            self._stream.flush()
            os.fsync(self._stream.fileno())
        except OSError as error:
            raise OutputError(f"cannot write manifest {self.path}: {error.strerror or error}") from error

    def close(self) -> None:
        self._stream.close()


def read_manifest(path: str | os.PathLike[str]) -> dict[str, ManifestRow]:
    """The last row of every path in a manifest (a torn last line of a killed run is ignored)."""
    rows: dict[str, ManifestRow] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return rows
    for line in lines:
        try:
            row = ManifestRow.from_json(json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue
        rows[row.path] = row
    return rows
