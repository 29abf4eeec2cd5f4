"""Event order of `dsm transcribe`: end of turn vs the open word, live TXT, turn marks in JSON and SRT.

Scripted text tokens (the tiny STT fixture's tokenizer, EPAD 0 / PAD 3 as in the released models) go
through ``InputEvents`` and the real writers; no model runs here.
"""

from __future__ import annotations

import io
import json
from fractions import Fraction

import pytest

from dsmcli.hub.checkpoint import load_checkpoint
from dsmcli.outputs import (
    JsonWriter,
    SrtWriter,
    TranscriptOutput,
    TxtWriter,
    WriterOptions,
)
from dsmcli.results import EndOfTurn, Word
from dsmcli.outputs.segments import SegmentOptions, SubtitleOptions
from dsmcli.hub.loaders import load_tokenizer
from dsmcli.stt.transcriber import InputEvents
from dsmcli.stt.words import WordAssembler

EPAD, EOS, PAD = 0, 2, 3
HIGH, LOW = 0.9, 0.1
THRESHOLD = 0.5
FRAME = Fraction(2, 25)  # seconds per step


@pytest.fixture(scope="module")
def tokenizer(tiny_stt):
    return load_tokenizer(load_checkpoint(tiny_stt).tokenizer_path)


def run_script(tokenizer, script, threshold=THRESHOLD):
    """``script``: ``[(token | text, end-of-turn probability)]``; a text stands for its pieces, one per step
    (each with the probability given). Returns ``[(step at which the event came out, event)]``."""
    steps = []
    for item, probability in script:
        ids = tokenizer.encode(item) if isinstance(item, str) else [item]
        steps += [(token, probability) for token in ids]
    words = WordAssembler(tokenizer, end_of_padding_id=EPAD, pad_id=PAD, eos_id=EOS, time_offset_seconds=0)
    events = InputEvents(words, Fraction(0), threshold)
    out = []
    for step, (token, probability) in enumerate(steps):
        out += [(step, event) for event in events.push(step, token, None, probability)]
    out += [(len(steps), event) for event in events.finish(len(steps) - 1)]
    return out


def kinds(events):
    return [e.text.strip() if isinstance(e, Word) else "<turn>" for _, e in events]


def test_end_of_turn_waits_for_the_last_word_of_the_turn(tokenizer):
    # "hello" is still open (its boundary comes with the next word) when the VAD fires at step 4
    script = [(EPAD, LOW), ("hello", LOW), (PAD, HIGH), (PAD, HIGH), (PAD, LOW), (EPAD, LOW), ("the", LOW),
              (PAD, LOW)]
    events = run_script(tokenizer, script)
    assert kinds(events) == ["hello", "<turn>", "the"]
    (hello_step, _), (turn_step, turn) = events[0], events[1]
    assert turn_step == hello_step == 7  # released right after the word, at the next boundary
    assert turn.time == pytest.approx(float(4 * FRAME)) and turn.probability == HIGH  # when the VAD fired
    # segmenting at the end of turn keeps "hello" in its turn
    out = TranscriptOutput([TxtWriter(io.StringIO(), owns_stream=False)],
                           SegmentOptions(split_on_punctuation=False, split_on_end_of_turn=True))
    segments = [s for _, event in events for s in out.push(event)] + out.close()
    assert [s.text.strip() for s in segments] == ["hello", "the"]


def test_end_of_turn_without_an_open_word_is_immediate_and_needs_new_text(tokenizer):
    script = [(PAD, HIGH), (EPAD, LOW), ("the", LOW), (EPAD, LOW), (PAD, HIGH), (PAD, HIGH), (PAD, HIGH),
              (EPAD, LOW), ("hello", LOW), (PAD, HIGH)]
    events = run_script(tokenizer, script)
    # no turn before any text; one turn, right away, once "the" is out; none again until new text
    assert kinds(events) == ["the", "<turn>", "hello", "<turn>"]
    assert events[1][0] == 4 and events[1][1].time == pytest.approx(float(4 * FRAME))
    assert events[3][0] == 9 + len(tokenizer.encode("hello"))  # held (the word is open), released by finish
    assert run_script(tokenizer, script, threshold=None) == [e for e in events if isinstance(e[1], Word)]


class RecordingStream(io.StringIO):
    """Remembers the text that was flushed, flush by flush."""

    def __init__(self):
        super().__init__()
        self.flushed: list[str] = []

    def flush(self):
        self.flushed.append(self.getvalue())


def test_txt_is_written_word_by_word_with_the_bytes_of_whole_segments():
    words = [Word(" Hello", 0.0, 0.4), Word(" world.", 0.4, 0.9), Word(" After", 5.0, 5.3), Word(" a", 5.3, 5.4),
             Word(" pause", 5.4, 5.8), EndOfTurn(6.0, 0.8), Word("again", 6.5, 6.9), Word(" and", 9.0, 9.2)]
    stream = RecordingStream()
    out = TranscriptOutput([TxtWriter(stream, owns_stream=False)], SegmentOptions(gap=1.5))
    segments = []
    for event in words:
        segments += out.push(event)
        if isinstance(event, Word):  # the word is on the stream, flushed, before the next event
            assert stream.flushed[-1].rstrip("\n").endswith(event.text.strip())
    segments += out.close()
    whole = "".join(segment.text.strip() + "\n" for segment in segments)
    assert [s.text for s in segments] == [" Hello world.", " After a pause", "again", " and"]
    assert stream.getvalue() == whole == "Hello world.\nAfter a pause\nagain\nand\n"


def test_json_marks_turns_and_srt_breaks_merged_cues_at_each_turn():
    events = [Word(" one", 0.0, 0.3), Word(" two", 0.3, 0.6), EndOfTurn(0.7, 0.95), Word(" three", 1.0, 1.3),
              Word(" four.", 1.3, 1.6), Word(" five", 1.7, 2.0), EndOfTurn(2.1, 0.9), EndOfTurn(2.2, 0.9)]
    json_stream, srt_stream = io.StringIO(), io.StringIO()
    options = WriterOptions(end_of_turn=True, subtitles=SubtitleOptions(max_line_width=40, max_line_count=2))
    writers = [JsonWriter(json_stream, options, owns_stream=False), SrtWriter(srt_stream, options, owns_stream=False)]
    with TranscriptOutput(writers, SegmentOptions()) as out:
        for event in events:
            out.push(event)
    document = json.loads(json_stream.getvalue())
    assert [(s["text"], s["end_of_turn"]) for s in document["segments"]] == [
        (" one two", True), (" three four.", False), (" five", True)]
    assert document["end_of_turns"] == [{"time": 0.7, "probability": 0.95}, {"time": 2.1, "probability": 0.9},
                                        {"time": 2.2, "probability": 0.9}]
    # width 40 x 2 lines would merge all segments into one cue; each end of turn breaks it
    cues = [block.split("\n", 2)[2] for block in srt_stream.getvalue().strip().split("\n\n")]
    assert cues == ["one two", "three four. five"]


def test_without_vad_json_has_no_turn_keys():
    stream = io.StringIO()
    with TranscriptOutput([JsonWriter(stream, WriterOptions(), owns_stream=False)]) as out:
        out.push(Word(" a", 0.0, 0.1))
    document = json.loads(stream.getvalue())
    assert "end_of_turns" not in document and "end_of_turn" not in document["segments"][0]


def test_word_assembler_tells_when_text_is_pending(tokenizer):
    words = WordAssembler(tokenizer, end_of_padding_id=EPAD, pad_id=PAD, eos_id=EOS, time_offset_seconds=0)
    hello = tokenizer.encode("hello")
    assert not words.has_pending_text
    words.push(0, EPAD)
    assert not words.has_pending_text  # a boundary, no text yet
    for step, token in enumerate(hello, start=1):
        assert words.push(step, token) == [] and words.has_pending_text
    words.push(len(hello) + 1, PAD)
    assert words.has_pending_text  # padding does not close the word
    assert [w.text for w in words.push(len(hello) + 2, EPAD)] == [" hello"] and not words.has_pending_text
    words.push(len(hello) + 3, tokenizer.encode("the")[0])
    assert words.has_pending_text and [w.text for w in words.finish()] == [" the"] and not words.has_pending_text
