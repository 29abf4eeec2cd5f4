"""``dsm speak`` input/output plumbing: strict UTF-8 (whole and streamed), the stdin entry feed, output planning,
and ``--play`` through an injected fake output stream (no sound device, no PortAudio)."""

from __future__ import annotations

import io
import json
import os
import threading
import time

import numpy as np
import pytest
import soundfile
import torch

from dsmcli.audio import open_sink
from dsmcli.errors import InputError, OutputError, UsageError
from dsmcli.tts.model import SpeakOptions
from dsmcli.commands.speak_output import plan_outputs
from dsmcli.commands.speak_run import SpeakInput, SpeakRequest, execute
from dsmcli.tts.text_feed import StdinReader, StreamingEntries, Utf8Pieces, decode_utf8
from dsmcli.tts.script import EntryStream
from dsmcli.tts.tokens import TtsTokenIds

IDS = TtsTokenIds.for_text_card(255)


class CharTokenizer:
    def encode(self, text: str) -> list[int]:
        return [4 + ord(c) % 200 for c in text]


# ----------------------------------------------------------------------------------------------------- text


def test_decode_utf8_names_the_byte_offset():
    assert decode_utf8("\ufeffBonjour à vous".encode(), "x") == "Bonjour à vous"
    with pytest.raises(InputError, match=r"x: not valid UTF-8 text \(byte 0xe0 at offset 8\)"):
        decode_utf8("Bonjour à vous".encode("latin-1"), "x")


@pytest.mark.parametrize("split", [1, 2, 3, 5])
def test_streamed_utf8_offsets_across_chunks(split):
    data = "ça va — très bien".encode() + b" \xff tail"
    pieces = [data[i : i + split] for i in range(0, len(data), split)]
    decoder = Utf8Pieces("<stdin>")
    text = ""
    bad = data.index(b"\xff")
    with pytest.raises(InputError, match=rf"byte 0xff at offset {bad}\)"):
        for piece in pieces:
            text += decoder.decode(piece)
    # every piece before the one holding the bad byte was decoded (a cut multibyte sequence stays buffered)
    assert text == data[: bad // split * split].decode("utf-8", errors="ignore")
    good, whole = data[: bad - 1], Utf8Pieces("s")
    assert "".join(whole.decode(good[i : i + split]) for i in range(0, len(good), split)) == "ça va — très bien"
    with pytest.raises(InputError, match="offset 2"):  # a sequence cut by the end of the stream
        Utf8Pieces("s").decode(b"ok\xc3", final=True)


def test_streaming_entries_from_a_pipe():
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reader_file, os.fdopen(write_fd, "wb") as writer:
        feed = StreamingEntries("<stdin>", StdinReader(reader_file), EntryStream(CharTokenizer(), IDS,
                                                                                     multi_speaker=False))
        writer.write("\ufeffhello wor".encode())
        writer.flush()
        feed.wait(5.0)
        entries, closed = feed.poll()
        assert [e.text for e in entries] == ["hello"] and not closed  # "wor" may continue
        writer.write(b"ld  again")
        writer.close()
        deadline, got = time.monotonic() + 5, []
        while not closed and time.monotonic() < deadline:
            feed.wait(0.1)
            entries, closed = feed.poll()
            got += [e.text for e in entries]
        assert got == ["world", "again"] and closed
        assert feed.poll() == ([], True)


def test_streaming_entries_errors():
    empty = StreamingEntries("<stdin>", StdinReader(io.BytesIO(b"  \n ")),
                             EntryStream(CharTokenizer(), IDS, multi_speaker=False))
    empty.wait(5.0)
    with pytest.raises(InputError, match="no text to speak"):
        for _ in range(50):
            empty.wait(0.1)
            empty.poll()


# --------------------------------------------------------------------------------------------------- outputs


def test_plan_outputs_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one = [("talk.txt", "talk")]
    plan = plan_outputs(one, None, raw=False, play=False, formats=["srt", "json"], force=False)[0]
    assert plan.audio == "talk.wav" and [str(p) for _, p in plan.subtitles] == ["talk.srt", "talk.json"]
    (tmp_path / "out").mkdir()
    plan = plan_outputs(one, "out/speech.flac", raw=False, play=False, formats=["srt"], force=False)[0]
    assert plan.audio == "out/speech.flac" and str(plan.subtitles[0][1]) == "out/speech.srt"
    plan = plan_outputs([("a.txt", "a"), ("b.txt", "b")], "dir/", raw=True, play=False, formats=[], force=False)
    assert [p.audio for p in plan] == ["dir/a.raw", "dir/b.raw"] and (tmp_path / "dir").is_dir()
    plan = plan_outputs(one, "-", raw=False, play=True, formats=["srt"], force=False)[0]
    assert plan.audio == "-" and plan.play and str(plan.subtitles[0][1]) == "talk.srt"
    assert plan_outputs(one, None, raw=False, play=True, formats=[], force=False)[0].audio is None
    (tmp_path / "talk.wav").write_bytes(b"")
    with pytest.raises(OutputError, match="exists"):
        plan_outputs(one, None, raw=False, play=False, formats=[], force=False)
    assert plan_outputs(one, None, raw=False, play=False, formats=[], force=True)[0].audio == "talk.wav"
    with pytest.raises(UsageError, match="two outputs"):
        plan_outputs([("a/x.txt", "x"), ("b/x.txt", "x")], "dir/", raw=False, play=False, formats=[], force=False)
    with pytest.raises(UsageError, match="several inputs"):
        plan_outputs([("a", "a"), ("b", "b")], "-", raw=False, play=False, formats=[], force=False)
    with pytest.raises(UsageError, match="file name"):
        plan_outputs([("a", "a"), ("b", "b")], "x.wav", raw=False, play=False, formats=[], force=False)


def test_output_without_extension_is_a_wav_file(tmp_path, monkeypatch):
    """`speak -o noext` made noext/speech.wav; a path is a directory only if it is one or ends with /."""
    monkeypatch.chdir(tmp_path)
    one = [("--text", "speech")]
    plan = plan_outputs(one, "noext", raw=False, play=False, formats=["srt", "json"], force=False)[0]
    assert plan.audio == "noext" and [str(p) for _, p in plan.subtitles] == ["noext.srt", "noext.json"]
    assert not (tmp_path / "noext").exists()
    sink = open_sink(plan.audio, 24000)
    sink.write(np.full(480, 0.25, dtype=np.float32))
    sink.close()
    audio, rate = soundfile.read("noext", dtype="float32")
    assert rate == 24000 and len(audio) == 480 and abs(audio[0] - 0.25) < 1e-4
    assert plan_outputs(one, "new/", raw=False, play=False, formats=[], force=False)[0].audio == "new/speech.wav"
    (tmp_path / "there").mkdir()
    assert plan_outputs(one, "there", raw=True, play=False, formats=[], force=False)[0].audio == "there/speech.raw"
    with pytest.raises(UsageError, match=r"names the speech audio.*--srt"):
        plan_outputs(one, "talk.srt", raw=False, play=False, formats=[], force=False)
    with pytest.raises(UsageError, match="file name"):
        plan_outputs([("a", "a"), ("b", "b")], "noext", raw=False, play=False, formats=[], force=False)


# ------------------------------------------------------------------------------------------------------ play


class FakeOutputStream:
    """Stands in for ``sounddevice.OutputStream``: records its arguments, writes and calls."""

    instances: list[FakeOutputStream] = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.written = kwargs, [], []
        self.thread = threading.current_thread()
        FakeOutputStream.instances.append(self)

    def start(self):
        self.calls.append("start")

    def write(self, data):
        self.written.append(data.copy())
        return False

    def stop(self):
        self.calls.append("stop")

    def abort(self):
        self.calls.append("abort")

    def close(self):
        self.calls.append("close")


def test_play_writes_to_the_speakers_as_it_generates(tmp_path, tiny_tts, tiny_voices):
    FakeOutputStream.instances = []
    text = tmp_path / "hi.txt"
    text.write_text("Hello there, the speakers play this.", encoding="utf-8")
    request = SpeakRequest(inputs=(SpeakInput(source=str(text)),), model=tiny_tts, voice_repo=tiny_voices,
                           voices=("voices/alice.wav",), options=SpeakOptions(temperature=0.0), play=True,
                           output=str(tmp_path / "hi.wav"), speaker_factory=FakeOutputStream, audio_device=3)
    result = execute(request)
    assert result.exit_code == 0
    (stream,) = FakeOutputStream.instances
    assert stream.kwargs == {"samplerate": 24000, "blocksize": 1920, "device": 3, "channels": 1, "dtype": "float32"}
    assert stream.calls == ["start", "stop", "close"]  # drained at the end
    played = np.concatenate(stream.written)[:, 0]
    assert all(chunk.shape == (1920, 1) for chunk in stream.written)
    frames = result.sinks[0].result.frames
    assert len(stream.written) == frames and played.std() > 0.01
    import soundfile

    written, _ = soundfile.read(str(tmp_path / "hi.wav"), dtype="float32")  # the same audio tee'd to the file
    assert np.abs(written - played).max() <= 1 / 32768 + 1e-7
    assert torch.tensor(played).abs().max() <= 1.0


def test_ctrl_c_clips_the_word_timestamps_to_the_audio_written(tmp_path, monkeypatch, capsys):
    """The SRT's last cue ran past the end of the WAV after Ctrl-C: words are now written once the audio covers
    them, and at an interruption the one running past the audio ends with it, those after it are dropped."""
    from dsmcli.outputs import WriterOptions
    from dsmcli.results import Word
    from dsmcli.commands.speak_output import OutputSink

    monkeypatch.chdir(tmp_path)
    (plan,) = plan_outputs([("--text", "speech")], "out.wav", raw=False, play=False, formats=["srt", "json"],
                           force=False)
    sink = OutputSink(plan, force=False, writer_options=WriterOptions(model="m"), errors=[])
    frame = np.full(1920, 0.1, dtype=np.float32)  # 80 ms
    words = [Word(" one", 0.16, 0.40), Word(" two.", 0.40, 0.72), Word(" three", 0.72, 1.04)]
    for word in words:
        sink.word(word)
    for _ in range(8):  # 0.64 s of audio, then Ctrl-C
        sink.audio(frame)
    assert soundfile.info("out.wav").frames == 8 * 1920
    sink.abort()
    audio_seconds = soundfile.info("out.wav").duration
    assert audio_seconds == pytest.approx(0.64)
    srt = (tmp_path / "out.srt").read_text()
    assert srt == "1\n00:00:00,160 --> 00:00:00,640\none two.\n\n"
    document = json.loads((tmp_path / "out.json").read_text())
    assert [(w["word"], w["end"]) for s in document["segments"] for w in s["words"]] == [(" one", 0.4), (" two.", 0.64)]
    assert document["duration"] == pytest.approx(0.64)
    assert capsys.readouterr().err.splitlines() == [
        "dsm: wrote out.wav (0.6 s, interrupted)", "dsm: wrote out.srt (2 words, interrupted)",
        "dsm: wrote out.json (2 words, interrupted)"]
