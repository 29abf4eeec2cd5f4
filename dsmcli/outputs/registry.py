"""Format name → writer class."""

from __future__ import annotations

from dsmcli.errors import UsageError
from dsmcli.outputs.base import TranscriptWriter
from dsmcli.outputs.jsonfmt import JsonlWriter, JsonWriter
from dsmcli.outputs.subtitles import SrtWriter, VttWriter
from dsmcli.outputs.text import TsvWriter, TxtWriter

WRITERS: dict[str, type[TranscriptWriter]] = {
    writer.extension: writer for writer in (TxtWriter, SrtWriter, VttWriter, TsvWriter, JsonWriter, JsonlWriter)
}
ALL_FORMATS = "all"  # whisper's "-f all": txt, srt, vtt, tsv, json
WHISPER_FORMATS = ("txt", "vtt", "srt", "tsv", "json")
DEFAULT_FORMAT = "txt"  # when neither -f nor the output file's extension names one


def resolve_formats(formats: list[str] | tuple[str, ...]) -> list[str]:
    """Validated format names, ``all`` expanded, duplicates dropped (order kept)."""
    names: list[str] = []
    for name in formats:
        expanded = WHISPER_FORMATS if name == ALL_FORMATS else (name.lower(),)
        for item in expanded:
            if item not in WRITERS:
                known = ", ".join([*WRITERS, ALL_FORMATS])
                raise UsageError(f"unknown output format {name!r} (choose from {known})")
            if item not in names:
                names.append(item)
    if not names:
        raise UsageError("no output format given")
    return names


def format_for_path(path: str) -> str | None:
    """The format a file name's extension names (``out.srt`` → ``srt``), if any."""
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return suffix if suffix in WRITERS else None
