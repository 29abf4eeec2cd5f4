"""Transcript output formats: one small writer class per format, picked from ``WRITERS``.

Typical use::

    writers = open_writers(["srt", "json"], output_dir, stem="talk", force=False, options=opts)
    with TranscriptOutput(writers) as out:
        for event in events:          # Word / EndOfTurn, as the model produces them
            out.push(event)
        out.close(duration=seconds)
"""

from dsmcli.outputs.base import TranscriptWriter, WriterOptions
from dsmcli.outputs.fanout import TranscriptOutput
from dsmcli.outputs.files import STDOUT, is_directory_target, open_writers, output_paths
from dsmcli.outputs.jsonfmt import JSON_SCHEMA_VERSION, JsonlWriter, JsonWriter, segment_to_dict, transcript_to_dict
from dsmcli.outputs.registry import ALL_FORMATS, DEFAULT_FORMAT, WRITERS, format_for_path, resolve_formats
from dsmcli.outputs.subtitles import SrtWriter, VttWriter
from dsmcli.outputs.text import TsvWriter, TxtWriter
from dsmcli.outputs.timestamps import format_timestamp

__all__ = [
    "ALL_FORMATS",
    "DEFAULT_FORMAT",
    "JSON_SCHEMA_VERSION",
    "STDOUT",
    "WRITERS",
    "JsonWriter",
    "JsonlWriter",
    "SrtWriter",
    "TranscriptOutput",
    "TranscriptWriter",
    "TsvWriter",
    "TxtWriter",
    "VttWriter",
    "WriterOptions",
    "format_for_path",
    "format_timestamp",
    "is_directory_target",
    "open_writers",
    "output_paths",
    "resolve_formats",
    "segment_to_dict",
    "transcript_to_dict",
]
