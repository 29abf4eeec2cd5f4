"""Bodies of OpenAI's audio API (docs: PROTOCOLS.md §4): transcription responses in every
``response_format`` (SRT / VTT through ``dsmcli.outputs``' writers), errors, and speech audio encodings."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import soundfile

from dsmcli.audio.sinks import to_pcm16, wav_header
from dsmcli.constants import SAMPLE_RATE
from dsmcli.outputs import SrtWriter, TranscriptOutput, VttWriter, WriterOptions, segment_to_dict
from dsmcli.results import Segment, Word
from dsmcli.outputs.segments import SegmentOptions

TRANSCRIPTION_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
SUBTITLE_WRITERS = {"srt": SrtWriter, "vtt": VttWriter}
MEDIA_TYPES = {"json": "application/json", "verbose_json": "application/json", "text": "text/plain; charset=utf-8",
               "srt": "application/x-subrip; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}
# Speech: streamed as generated (wav with streaming sizes, raw pcm) or encoded by libsndfile at the end.
STREAMED_AUDIO = {"wav": "audio/wav", "pcm": "audio/pcm"}
ENCODED_AUDIO = {"flac": ("FLAC", "PCM_16", "audio/flac"), "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
                 "opus": ("OGG", "OPUS", "audio/ogg"), "ogg": ("OGG", "VORBIS", "audio/ogg"),
                 "aiff": ("AIFF", "PCM_16", "audio/aiff")}
SEGMENTS = SegmentOptions(gap=None, split_on_end_of_turn=False)  # as `dsm transcribe` without --gap / --vad
LANGUAGE = "unknown"  # DSM models do not report the language they hear


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def transcript_text(words: list[Word]) -> str:
    return "".join(word.text for word in words).strip()


def segments(words: list[Word]) -> list[Segment]:
    output = TranscriptOutput([], SEGMENTS)
    found = [segment for word in words for segment in output.push(word)]
    return found + output.close()


def subtitles(fmt: str, words: list[Word], model: str) -> str:
    """The SRT / VTT text ``dsm transcribe --format srt|vtt`` writes for these words."""
    stream = io.StringIO()
    writer = SUBTITLE_WRITERS[fmt](stream, WriterOptions(model=model), name=fmt, owns_stream=False)
    output = TranscriptOutput([writer], SEGMENTS)
    for word in words:
        output.push(word)
    output.close()
    return stream.getvalue()


def verbose(words: list[Word], duration: float, granularities: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"task": "transcribe", "language": LANGUAGE, "duration": duration,
                            "text": transcript_text(words)}
    if "word" in granularities:
        body["words"] = [{"word": w.text.strip(), "start": w.start, "end": w.end} for w in words]
    if "segment" in granularities or not granularities:
        body["segments"] = [{k: v for k, v in segment_to_dict(s).items() if k != "words"} for s in segments(words)]
    body["usage"] = {"type": "duration", "seconds": duration}
    return body


def transcription(fmt: str, words: list[Word], duration: float, granularities: list[str], model: str) -> str:
    """The response body of ``response_format`` ``fmt``."""
    if fmt == "json":
        return json.dumps({"text": transcript_text(words), "usage": {"type": "duration", "seconds": duration}})
    if fmt == "verbose_json":
        return json.dumps(verbose(words, duration, granularities))
    if fmt == "text":
        return transcript_text(words) + "\n"
    return subtitles(fmt, words, model)


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def audio_start(fmt: str) -> bytes:
    return wav_header(SAMPLE_RATE, 1, None) if fmt == "wav" else b""


def audio_frame(pcm: np.ndarray) -> bytes:
    """One frame as 16-bit little-endian PCM (what ``dsm speak`` writes in a WAV)."""
    return to_pcm16(pcm)


def encode_audio(fmt: str, pcm: np.ndarray) -> bytes:
    container, subtype, _ = ENCODED_AUDIO[fmt]
    out = io.BytesIO()
    with soundfile.SoundFile(out, "w", samplerate=SAMPLE_RATE, channels=1, format=container, subtype=subtype) as f:
        f.write(pcm)
    return out.getvalue()


def speech_formats() -> dict[str, str]:
    """``response_format`` -> media type, for the encodings this libsndfile writes."""
    available = soundfile.available_formats()
    formats = dict(STREAMED_AUDIO)
    for name, (container, subtype, media) in ENCODED_AUDIO.items():
        if container in available and subtype in soundfile.available_subtypes(container):
            formats[name] = media
    return formats
