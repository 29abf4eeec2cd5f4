"""Byte-exact TXT / SRT / VTT / TSV / JSON / JSONL for a known word list (whisper's rules).

The subtitle layouts with options were checked against openai/whisper's own
``SubtitlesWriter`` (utils.py) on these words, and on 3000 random word lists × option
combinations during development; the strings below are whisper's output.
"""

from __future__ import annotations

import io
import json
import zlib

import pytest

from dsmcli.outputs import (
    WRITERS,
    JsonlWriter,
    JsonWriter,
    SrtWriter,
    TsvWriter,
    TxtWriter,
    VttWriter,
    WriterOptions,
    format_timestamp,
)
from dsmcli.results import EndOfTurn, Segment, Word
from dsmcli.outputs.segments import SubtitleOptions

SEGMENTS = (
    Segment.from_words(0, [Word(" Hello", 0.0, 0.42, 0.9, (-0.5, -0.25)), Word(" world.", 0.42, 0.96, 0.8, (-0.75,))]),
    Segment.from_words(
        1,
        [Word(" This", 1.5, 1.8), Word(" is", 1.8, 1.92), Word(" a", 1.92, 2.0), Word(" test.", 2.0, 2.4)],
    ),
    Segment.from_words(
        2,
        [Word(" After", 6.0, 6.3), Word(" a", 6.4, 6.5), Word(" long", 6.5, 6.9), Word(" pause.", 6.9, 7.25)],
    ),
    Segment.from_words(3, [Word(" Late\tword", 3661.5, 3662.0), Word(" -->", 3662.0, 3662.25)]),
)


def render(writer_class, segments=SEGMENTS, options=WriterOptions(), duration=None) -> str:
    stream = io.StringIO()
    writer = writer_class(stream, options, owns_stream=False)
    for segment in segments:
        for word in segment.words:
            writer.write_word(word)
        writer.write_segment(segment)
    writer.close(duration)
    return stream.getvalue()


def test_format_timestamp_like_whisper():
    assert format_timestamp(0.0) == "00:00.000"
    assert format_timestamp(3661.5, always_include_hours=True, decimal_marker=",") == "01:01:01,500"
    assert format_timestamp(59.9996) == "01:00.000"  # milliseconds are rounded, then carried
    assert format_timestamp(0.0015) == "00:00.002"
    assert format_timestamp(36000.0) == "10:00:00.000"
    with pytest.raises(ValueError):
        format_timestamp(-0.01)


def test_srt_bytes():
    assert render(SrtWriter) == (
        "1\n00:00:00,000 --> 00:00:00,960\nHello world.\n\n"
        "2\n00:00:01,500 --> 00:00:02,400\nThis is a test.\n\n"
        "3\n00:00:06,000 --> 00:00:07,250\nAfter a long pause.\n\n"
        "4\n01:01:01,500 --> 01:01:02,250\nLate\tword ->\n\n"
    )


def test_vtt_bytes():
    assert render(VttWriter) == (
        "WEBVTT\n\n"
        "00:00.000 --> 00:00.960\nHello world.\n\n"
        "00:01.500 --> 00:02.400\nThis is a test.\n\n"
        "00:06.000 --> 00:07.250\nAfter a long pause.\n\n"
        "01:01:01.500 --> 01:01:02.250\nLate\tword ->\n\n"
    )


def test_tsv_and_txt_bytes():
    assert render(TsvWriter) == (
        "start\tend\ttext\n0\t960\tHello world.\n1500\t2400\tThis is a test.\n"
        "6000\t7250\tAfter a long pause.\n3661500\t3662250\tLate word -->\n"
    )
    assert render(TxtWriter) == "Hello world.\nThis is a test.\nAfter a long pause.\nLate\tword -->\n"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            SubtitleOptions(max_line_width=12, max_line_count=2),
            "1\n00:00:00,000 --> 00:00:02,000\nHello world.\nThis is a\n\n"
            "2\n00:00:02,000 --> 00:00:02,400\ntest.\n\n"
            "3\n00:00:06,000 --> 00:00:07,250\nAfter a long\npause.\n\n",
        ),
        (
            SubtitleOptions(max_words_per_line=2),
            "1\n00:00:00,000 --> 00:00:00,960\nHello world.\n\n"
            "2\n00:00:01,500 --> 00:00:01,920\nThis is\n\n"
            "3\n00:00:01,920 --> 00:00:02,400\na test.\n\n"
            "4\n00:00:06,000 --> 00:00:06,500\nAfter a\n\n"
            "5\n00:00:06,500 --> 00:00:07,250\nlong pause.\n\n",
        ),
        (
            SubtitleOptions(max_line_width=12),
            "1\n00:00:00,000 --> 00:00:00,960\nHello world.\n\n"
            "2\n00:00:01,500 --> 00:00:02,400\nThis is a\ntest.\n\n"
            "3\n00:00:06,000 --> 00:00:07,250\nAfter a long\npause.\n\n",
        ),
        (
            SubtitleOptions(highlight_words=True),
            "1\n00:00:00,000 --> 00:00:00,420\n<u>Hello</u> world.\n\n"
            "2\n00:00:00,420 --> 00:00:00,960\nHello <u>world.</u>\n\n"
            "3\n00:00:01,500 --> 00:00:01,800\n<u>This</u> is a test.\n\n"
            "4\n00:00:01,800 --> 00:00:01,920\nThis <u>is</u> a test.\n\n"
            "5\n00:00:01,920 --> 00:00:02,000\nThis is <u>a</u> test.\n\n"
            "6\n00:00:02,000 --> 00:00:02,400\nThis is a <u>test.</u>\n\n"
            "7\n00:00:06,000 --> 00:00:06,300\n<u>After</u> a long pause.\n\n"
            "8\n00:00:06,300 --> 00:00:06,400\nAfter a long pause.\n\n"
            "9\n00:00:06,400 --> 00:00:06,500\nAfter <u>a</u> long pause.\n\n"
            "10\n00:00:06,500 --> 00:00:06,900\nAfter a <u>long</u> pause.\n\n"
            "11\n00:00:06,900 --> 00:00:07,250\nAfter a long <u>pause.</u>\n\n",
        ),
    ],
    ids=["width+count", "words-per-line", "width-only", "highlight"],
)
def test_subtitle_options_follow_whisper(options, expected):
    assert render(SrtWriter, SEGMENTS[:3], WriterOptions(subtitles=options)) == expected


def test_subtitle_option_validation():
    with pytest.raises(ValueError):
        SubtitleOptions(max_line_width=0)


def ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


def test_json_bytes_whisper_schema():
    options = WriterOptions(model="kyutai/stt-1b-en_fr", language="en")
    out = render(JsonWriter, SEGMENTS[:1], options, duration=1.5)
    expected = (
        '{"text": " Hello world.", "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": 0.96, '
        '"text": " Hello world.", "tokens": [], "temperature": 0.0, "avg_logprob": -0.5, '
        f'"compression_ratio": {ratio(" Hello world.")!r}, "no_speech_prob": null, "words": ['
        '{"word": " Hello", "start": 0.0, "end": 0.42, "probability": 0.9}, '
        '{"word": " world.", "start": 0.42, "end": 0.96, "probability": 0.8}]}], '
        '"language": "en", "model": "kyutai/stt-1b-en_fr", "duration": 1.5, "version": "1.0"}'
    )
    assert out == expected


def test_json_rounds_times_like_whisper_and_keeps_unknown_probability_null():
    words = [Word(" é", 0.32000000000000006, 0.4449), Word(" b", 0.4449, 1.0050001)]
    data = json.loads(render(JsonWriter, [Segment.from_words(0, words)]))
    segment = data["segments"][0]
    assert [(w["start"], w["end"], w["probability"]) for w in segment["words"]] == [
        (0.32, 0.44, None),
        (0.44, 1.01, None),
    ]
    assert (segment["start"], segment["end"]) == (0.32, 1.01)
    assert data["text"] == " é b" and data["duration"] is None
    assert "\\u00e9" in render(JsonWriter, [Segment.from_words(0, words)])  # ASCII, as json.dump
    assert segment["avg_logprob"] is None and segment["no_speech_prob"] is None  # no figure: null, not 0.0


def test_jsonl_events_with_kyutai_names():
    stream = io.StringIO()
    writer = JsonlWriter(stream, owns_stream=False)
    writer.write_word(Word(" Bonjour", 0.5, 0.98, 0.7))
    writer.write_end_of_turn(EndOfTurn(1.2800000000000002, 0.93))
    writer.write_word(Word(" là", 1.3, 1.5))
    writer.close(2.0)
    assert stream.getvalue() == (
        '{"type": "Word", "text": "Bonjour", "start_time": 0.5}\n'
        '{"type": "EndWord", "stop_time": 0.98}\n'
        '{"type": "EndOfTurn", "time": 1.28, "probability": 0.93}\n'
        '{"type": "Word", "text": "là", "start_time": 1.3}\n'
        '{"type": "EndWord", "stop_time": 1.5}\n'
        '{"type": "Done", "duration": 2.0, "words": 2, "interrupted": false}\n'
    )


def test_registry_lists_every_format_with_its_extension():
    assert sorted(WRITERS) == ["json", "jsonl", "srt", "tsv", "txt", "vtt"]
    assert all(cls.extension == name for name, cls in WRITERS.items())
