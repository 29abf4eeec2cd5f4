"""`dsm transcribe` through its command line, in this process (``dsmcli.cli.main``): stdout text, bad inputs
and outputs, exit codes, --vad, the microphone path with a fake PortAudio stream.

Every failure must be one line on stderr (``dsm: error: ...``) with the documented exit code, never a
traceback; C decoders must not print either. The subprocess-level behaviour (pipes, Ctrl-C, a terminal)
is in test_transcribe_stream.py.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from dsmcli.audio.mp3check import frame_length
from dsmcli.cli import main
from dsmcli.commands import transcribe_run as run
from dsmcli.constants import FRAME_SIZE, SAMPLE_RATE
from dsmcli.outputs import WriterOptions
from dsmcli.results import Word
from dsmcli.outputs.segments import SegmentOptions
from dsmcli.stt import SttModel
from dsmcli.stt.transcriber import SttJob, TranscribeOptions, Transcriber

CLIP_SECONDS = 8.0
MP3_SECONDS = 3.0
ERROR_LINE = re.compile(r"^dsm: error: .+$")
C_DECODER_NOISE = ("Note:", "[src/libmpg123", "Traceback")

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def dsm(capfd, *args) -> tuple[int, str, str]:
    """Run ``dsm ARGS`` in this process; (exit code, stdout, stderr)."""
    capfd.readouterr()
    try:
        main([str(arg) for arg in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]), err
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


def jsonl_words(text: str) -> list[tuple[str, float, float]]:
    events = [json.loads(line) for line in text.splitlines()]
    starts = [(e["text"], e["start_time"]) for e in events if e["type"] == "Word"]
    ends = [e["stop_time"] for e in events if e["type"] == "EndWord"]
    return [(text, start, end) for (text, start), end in zip(starts, ends)]


@pytest.fixture(scope="module")
def files(tmp_path_factory, bria_24k):
    """A good 16-bit WAV clip and the bad inputs of issue 4."""
    folder = tmp_path_factory.mktemp("inputs")
    clip = bria_24k(CLIP_SECONDS)
    soundfile.write(folder / "clip.wav", clip, SAMPLE_RATE, subtype="PCM_16")
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is a text file, not a RIFF/WAVE header\n" * 20)
    nan = clip.copy()
    nan[len(nan) // 2 :: 997] = np.nan
    soundfile.write(folder / "nan.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    mp3 = mp3_frames(SHARED_MP3.read_bytes(), MP3_SECONDS)
    (folder / "cut.mp3").write_bytes(mp3[: len(mp3) // 2 + 7])  # inside a frame
    (folder / "damaged.mp3").write_bytes(damaged(mp3))
    (folder / "clip.xyz").write_bytes((folder / "clip.wav").read_bytes())  # a format only ffmpeg would try
    return folder


SHARED_MP3 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bria.mp3"


def mp3_frames(data: bytes, seconds: float) -> bytes:
    """The first whole MPEG frames of ``data`` covering ``seconds`` (a valid, shorter MP3)."""
    position, frames, needed = 0, 0, round(seconds * 44100 / 1152)
    while frames < needed:
        length = frame_length(data[position : position + 4])
        assert length is not None
        position, frames = position + length, frames + 1
    return data[:position]


def damaged(mp3: bytes) -> bytes:
    """Flipped bytes inside some frame bodies: libmpg123 decodes it but prints on stderr."""
    data, rng, position, index = bytearray(mp3), random.Random(0), 0, 0
    while position + 4 <= len(data):
        length = frame_length(bytes(data[position : position + 4]))
        assert length is not None
        if index >= 20 and index % 10 == 0:
            for _ in range(8):
                data[position + 8 + rng.randrange(length - 8)] ^= 0xFF
        position, index = position + length, index + 1
    return bytes(data)


@pytest.fixture(scope="module")
def clip_outputs(tiny_stt, files, tmp_path_factory):
    """txt and jsonl of the clip written to files by a plain run (the reference of the other runs)."""
    out = tmp_path_factory.mktemp("clip_out")
    code = main_code("transcribe", files / "clip.wav", "-m", tiny_stt, "-f", "txt", "-f", "jsonl", "-o", out)
    assert code == 0
    return (out / "clip.txt").read_text(), jsonl_words((out / "clip.jsonl").read_text())


def main_code(*args) -> int:
    try:
        main([str(arg) for arg in args])
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def test_default_prints_the_text_on_stdout(capfd, tiny_stt, files, clip_outputs):
    code, out, err = dsm(capfd, "transcribe", files / "clip.wav", "-m", tiny_stt)
    txt, words = clip_outputs
    assert (code, err) == (0, "")
    assert out == txt and len(words) >= 5
    assert "".join(out.split()) == "".join(w for w, _, _ in words)  # jsonl words carry no leading space


@pytest.mark.parametrize("name, fragment", [("empty.wav", "empty file"), ("text.wav", "not a readable audio"),
                                            ("cut.mp3", "truncated MP3"), ("nan.wav", "NaN")])
def test_a_bad_input_is_one_line_and_exit_code_4(capfd, tiny_stt, files, tmp_path, name, fragment):
    code, out, err = dsm(capfd, "transcribe", files / name, "-m", tiny_stt, "-f", "srt", "-o", tmp_path)
    assert code == 4 and out == ""
    assert_one_error_line(err, name, fragment)


def test_a_batch_writes_the_good_files_and_exits_5(capfd, tiny_stt, files, tmp_path):
    names = ["empty.wav", "clip.wav", "text.wav", "nan.wav", "cut.mp3", "damaged.mp3"]
    code, out, err = dsm(capfd, "transcribe", *(files / n for n in names), "-m", tiny_stt, "-b", "2",
                         "-f", "json", "-f", "srt", "-o", tmp_path)
    assert code == 5 and out == ""
    lines = err.splitlines()
    assert not any(noise in err for noise in C_DECODER_NOISE), err
    errors = [line for line in lines if ERROR_LINE.match(line)]
    assert len(errors) == 4 and len(lines) == 5, err  # one line per bad file, one warning for damaged.mp3
    for name in ("empty.wav", "text.wav", "nan.wav", "cut.mp3"):
        assert sum(name in line for line in errors) == 1
    assert re.fullmatch(r"dsm: warning: .*damaged\.mp3: the decoder skipped damaged data \(\d+ messages\)",
                        next(line for line in lines if "warning" in line))
    for stem, seconds in (("clip", CLIP_SECONDS), ("damaged", MP3_SECONDS)):
        document = json.loads((tmp_path / f"{stem}.json").read_text())
        assert document["duration"] == pytest.approx(seconds, abs=0.01)
        srt = (tmp_path / f"{stem}.srt").read_text()
        assert len(srt.split("\n\n")) - 1 == len(document["segments"])
    assert json.loads((tmp_path / "clip.json").read_text())["segments"]
    assert not (tmp_path / "empty.json").exists() and not (tmp_path / "cut.srt").exists()


def test_unknown_format_without_ffmpeg(capfd, tiny_stt, files, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg there
    code, out, err = dsm(capfd, "transcribe", files / "clip.xyz", "-m", tiny_stt)
    assert code == 4 and out == ""
    assert_one_error_line(err, "clip.xyz", "install ffmpeg", ".xyz")


@pytest.mark.parametrize("ffmpeg", [True, False], ids=["ffmpeg", "no-ffmpeg"])
def test_a_text_file_is_not_audio(capfd, files, tmp_path, monkeypatch, ffmpeg):
    """It said "install ffmpeg to read .txt files" (or quoted ffmpeg's "Invalid data")."""
    notes = tmp_path / "notes.txt"
    notes.write_text("Bonjour, ceci est une note — pas de l'audio.\n" * 200, encoding="utf-8")
    if not ffmpeg:
        monkeypatch.setenv("PATH", str(tmp_path))
    code, out, err = dsm(capfd, "transcribe", notes, "-m", "no/such-model")
    assert code == 4 and out == ""
    assert_one_error_line(err, "notes.txt: a text file, not audio")


def test_output_errors_come_before_the_model_loads(capfd, tiny_stt, files, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    code, _, err = dsm(capfd, "transcribe", files / "clip.wav", "-m", "no/such-model", "-f", "srt",
                       "-o", f"{blocker / 'out'}/")
    assert code == 1
    assert_one_error_line(err, "cannot create directory", "not a directory")
    (tmp_path / "clip.srt").write_text("keep me")
    code, _, err = dsm(capfd, "transcribe", files / "clip.wav", "-m", "no/such-model", "-f", "srt", "-o", tmp_path)
    assert code == 1 and (tmp_path / "clip.srt").read_text() == "keep me"
    assert_one_error_line(err, "clip.srt exists", "--force")
    code, _, err = dsm(capfd, "transcribe", files / "clip.wav", "-m", tiny_stt, "-f", "srt", "-o", tmp_path, "--force")
    assert code == 0 and err == "" and (tmp_path / "clip.srt").read_text().startswith("1\n")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_output_directory(capfd, tiny_stt, files, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = dsm(capfd, "transcribe", files / "clip.wav", "-m", tiny_stt, "-f", "srt", "-o", locked)
    assert code == 1
    assert_one_error_line(err, "permission denied")


def test_vad_needs_a_model_with_vad_heads(capfd, tiny_stt_prefix, files):
    code, out, err = dsm(capfd, "transcribe", files / "clip.wav", "-m", tiny_stt_prefix, "--vad")
    assert code == 2 and out == ""
    assert_one_error_line(err, "--vad", "no end-of-turn")


def cue_of_each_word(srt: str, words: list[str]) -> list[int]:
    """The index of the SRT cue holding each word (cues hold consecutive words, lines joined by spaces)."""
    cues = [" ".join(block.split("\n")[2:]).split() for block in srt.strip().split("\n\n")]
    owners = [index for index, cue in enumerate(cues) for _ in cue]
    assert [w for cue in cues for w in cue] == words, "the SRT holds the words in order"
    return owners


def test_vad_marks_turn_ends_in_jsonl_json_and_srt(capfd, tiny_stt, bria_24k, tmp_path):
    wav = tmp_path / "talk.wav"
    soundfile.write(wav, bria_24k(20.0), SAMPLE_RATE, subtype="FLOAT")
    code, _, err = dsm(capfd, "transcribe", wav, "-m", tiny_stt, "--vad", "--vad-threshold", "0.2",
                       "--max-line-width", "60", "--max-line-count", "3", "-f", "jsonl", "-f", "json", "-f", "srt",
                       "-o", f"{tmp_path / 'out'}/")
    assert (code, err) == (0, "")
    events = [json.loads(line) for line in (tmp_path / "out" / "talk.jsonl").read_text().splitlines()]
    words = [e["text"] for e in events if e["type"] == "Word"]
    turn_after = [sum(e["type"] == "Word" for e in events[:i]) for i, e in enumerate(events) if e["type"] == "EndOfTurn"]
    assert turn_after and any(0 < k < len(words) for k in turn_after), "the fixture must end turns mid-stream"
    owners = cue_of_each_word((tmp_path / "out" / "talk.srt").read_text(), words)
    for k in turn_after:  # a cue never spans an end of turn, even though 60 x 3 cues merge segments
        if 0 < k < len(words):
            assert owners[k - 1] != owners[k], f"a cue spans the end of turn after word {k}"
    document = json.loads((tmp_path / "out" / "talk.json").read_text())
    assert len(set(owners)) < len(document["segments"]), "with these options cues merge segments"
    assert len(document["end_of_turns"]) == len(turn_after)
    marked = [s for s in document["segments"] if s["end_of_turn"]]
    assert len(marked) == len([k for k in turn_after if k > 0])
    ends = np.cumsum([len(s["words"]) for s in document["segments"]])
    assert sorted(int(end) for end, s in zip(ends, document["segments"]) if s["end_of_turn"]) == sorted(
        k for k in turn_after if k > 0)


class FakeMicStream:
    """A sounddevice.InputStream stand-in: on start(), a thread delivers ``AUDIO`` in 1920-sample blocks
    through the callback, then presses Ctrl-C (SIGINT to this process)."""

    AUDIO = np.zeros(0, dtype=np.float32)

    def __init__(self, *, samplerate, blocksize, device, channels, dtype, callback):
        assert (samplerate, blocksize, channels, dtype) == (SAMPLE_RATE, FRAME_SIZE, 1, "float32")
        self.callback, self.active = callback, True
        self.thread = threading.Thread(target=self._play, daemon=True)

    def _play(self):
        for start in range(0, len(self.AUDIO), FRAME_SIZE):
            self.callback(self.AUDIO[start : start + FRAME_SIZE, None].copy(), FRAME_SIZE, None, None)
        os.kill(os.getpid(), signal.SIGINT)

    def start(self):
        self.thread.start()

    def stop(self):
        self.thread.join()

    def close(self):
        self.active = False


def test_microphone_until_ctrl_c(tiny_stt, bria_24k, tmp_path, monkeypatch):
    audio = bria_24k(6.0)  # 75 whole blocks
    monkeypatch.setattr(FakeMicStream, "AUDIO", audio)
    request = run.Request(
        sources=[run.MIC], formats=["jsonl"], output=str(tmp_path / "mic.jsonl"), force=False, model=tiny_stt,
        device=torch.device("cpu"), dtype=torch.float32, batch_size=1, raw=False, rate=None, channels=None,
        audio_device=None, options=TranscribeOptions(), writer_options=WriterOptions(),
        segment_options=SegmentOptions(), progress=False, mic_factory=FakeMicStream)
    result = run.execute(request)
    assert result.interrupted and result.exit_code == 130 and not result.errors
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the Ctrl-C handler is gone
    lines = [json.loads(line) for line in (tmp_path / "mic.jsonl").read_text().splitlines()]
    assert lines[-1] == {"type": "Done", "duration": 6.0, "words": len(lines[:-1]) // 2, "interrupted": True}
    # what the mic heard before Ctrl-C is transcribed in full: the same words as the same samples from a file
    expected = transcribe_array(SttModel.load(tiny_stt), audio)
    assert jsonl_words("\n".join(map(json.dumps, lines))) == [
        (w.text.strip(), round(w.start, 3), round(w.end, 3)) for w in expected]
    assert len(expected) >= 3


def transcribe_array(model, audio) -> list[Word]:
    words: list[Word] = []

    class Collect:
        def event(self, event):
            words.append(event)

        def finish(self, duration):
            pass

        def fail(self, error):
            raise error

    Transcriber(model).run([SttJob("array", lambda: [audio], Collect())])
    return words


@pytest.mark.parametrize("flag, stderr_tty, stdout_tty, sources, expected", [
    (None, True, False, ["a.wav"], True),  # a terminal, the text goes to a pipe
    (None, True, True, ["a.wav"], False),  # the live text itself shows the progress on the terminal
    (None, True, True, ["a.wav", "b.wav"], True),  # several files are written to the current directory
    (None, False, True, ["a.wav", "b.wav"], False),  # stderr is not a terminal
    (False, True, False, ["a.wav"], False),  # --no-progress
    (True, False, False, ["a.wav"], True),  # --progress
])
def test_progress_bars_on_a_terminal_unless_asked(monkeypatch, flag, stderr_tty, stdout_tty, sources, expected):
    monkeypatch.setattr(run.sys, "stderr", type("Err", (), {"isatty": staticmethod(lambda: stderr_tty)})())
    monkeypatch.setattr(run.sys, "stdout", type("Out", (), {"isatty": staticmethod(lambda: stdout_tty)})())
    request = run.Request(
        sources=sources, formats=["txt"], output=None, force=False, model="m", device=torch.device("cpu"),
        dtype=torch.float32, batch_size=1, raw=False, rate=None, channels=None, audio_device=None,
        options=TranscribeOptions(), writer_options=WriterOptions(), segment_options=SegmentOptions(),
        progress=flag)
    assert run.show_progress(request) is expected


def test_decoder_chatter_is_dropped_and_other_stderr_output_kept(capfd):
    from dsmcli.audio.native_stderr import DecoderStderr

    quiet = DecoderStderr()
    capfd.readouterr()
    for _ in range(2):  # reusable: one capture per decoder call
        with quiet:
            os.write(2, b"Note: Illegal Audio-MPEG-Header 0x00000000 at offset 50155.\n")
            os.write(2, b"[src/libmpg123/layer3.c:INT123_do_layer3():1804] error: dequantization failed!\n")
            os.write(2, b"progress 50%\n")  # e.g. another thread's progress bar
    quiet.close()
    assert capfd.readouterr().err == "progress 50%\n" * 2 and quiet.dropped == 4


def test_output_file_extension_picks_the_format(capfd, tiny_stt, files, tmp_path):
    """-o x.srt writes SRT (it wrote plain text); -o result is a file, not a directory; a mismatch is refused."""
    code, _, err = dsm(capfd, "transcribe", files / "clip.wav", "-m", tiny_stt, "-f", "srt", "-o", f"{tmp_path}/")
    assert (code, err) == (0, "")
    reference = (tmp_path / "clip.srt").read_text()
    assert reference.startswith("1\n00:00:")
    code, _, err = dsm(capfd, "transcribe", files / "clip.wav", "-m", tiny_stt, "-o", tmp_path / "x.srt")
    assert (code, err) == (0, "") and (tmp_path / "x.srt").read_text() == reference
    code, out, err = dsm(capfd, "transcribe", files / "clip.wav", "-m", tiny_stt, "-o", tmp_path / "result")
    assert (code, out, err) == (0, "", "") and (tmp_path / "result").is_file()
    code, stdout_text, _ = dsm(capfd, "transcribe", files / "clip.wav", "-m", tiny_stt)
    assert (tmp_path / "result").read_text() == stdout_text
    code, out, err = dsm(capfd, "transcribe", files / "clip.wav", "-m", "no/such-model", "-f", "txt",
                         "-o", tmp_path / "y.srt")
    assert code == 2 and out == "" and not (tmp_path / "y.srt").exists()
    assert_one_error_line(err, "y.srt names the srt format", "-f txt")
    code, _, err = dsm(capfd, "transcribe", files / "clip.wav", files / "clip.wav", "-m", "no/such-model",
                       "-o", tmp_path / "several")
    assert code == 2 and not (tmp_path / "several").exists()
    assert_one_error_line(err, "several inputs need an output directory")


def test_several_formats_without_output_go_to_the_current_directory(capfd, tiny_stt, files, tmp_path, monkeypatch):
    """whisper's behaviour: `-f all` without -o writes <stem>.<ext> here (it failed: "only one format to stdout")."""
    monkeypatch.chdir(tmp_path)
    code, out, err = dsm(capfd, "transcribe", files / "clip.wav", "-m", tiny_stt, "-f", "all")
    assert (code, out, err) == (0, "", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"clip.{ext}" for ext in ("json", "srt", "tsv", "txt", "vtt")]
    assert json.loads((tmp_path / "clip.json").read_text())["segments"]
    (tmp_path / "clip.txt").write_text("keep me")
    code, _, err = dsm(capfd, "transcribe", files / "clip.wav", "-m", tiny_stt, "--srt", "--json")
    assert code == 1 and (tmp_path / "clip.txt").read_text() == "keep me"
    assert_one_error_line(err, "clip.srt exists", "--force")
