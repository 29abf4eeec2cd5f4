"""`dsm transcribe` on pipes, signals and terminals: audio piped on stdin (WAV, and raw s16le written
progressively to a separate process that prints words before the pipe closes), Ctrl-C during a run, several
files without -o with the progress bars on a terminal.

The reference of every comparison is the same 16-bit samples read from a WAV file (int16 quantization
changes the audio slightly, so the float clip itself is not the reference).
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile
from conftest import SINGLE_THREAD_ENV, subprocess_env

SECONDS = 8.0
SAMPLE_RATE = 24000
PIECE_SECONDS = 0.25  # stdin is written in pieces this long
STARTUP_SECONDS = 120.0  # generous: the CI machine is shared
SRT_CUE = re.compile(r"(\d+)\n(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n([^\n]+(?:\n[^\n]+)*)\n\n")

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes, signals and terminals"),
              pytest.mark.usefixtures("torch_single_thread")]


def words_of(jsonl: str) -> list[tuple[str, float, float]]:
    events = [json.loads(line) for line in jsonl.splitlines()]
    starts = [(e["text"], e["start_time"]) for e in events if e["type"] == "Word"]
    ends = [e["stop_time"] for e in events if e["type"] == "EndWord"]
    assert len(starts) == len(ends)
    return [(text, start, end) for (text, start), end in zip(starts, ends)]


def dsm_process(*args, env=None, **kwargs) -> subprocess.Popen:
    env = subprocess_env({**SINGLE_THREAD_ENV, **(env or {})})
    return subprocess.Popen([sys.executable, "-m", "dsmcli", *map(str, args)], env=env, **kwargs)


@pytest.fixture(scope="module")
def pcm16(bria_24k) -> np.ndarray:
    """``SECONDS`` of speech as int16 samples."""
    return np.round(np.clip(bria_24k(SECONDS), -1, 1) * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def wav_file(pcm16, tmp_path_factory):
    path = tmp_path_factory.mktemp("stdin") / "talk.wav"
    soundfile.write(path, pcm16, SAMPLE_RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def file_words(tiny_stt, wav_file, tmp_path_factory):
    """The words of the WAV file, transcribed in this process (the reference of the piped runs)."""
    from dsmcli.cli import main

    out = tmp_path_factory.mktemp("file_out") / "talk.jsonl"
    main(["transcribe", str(wav_file), "-m", tiny_stt, "-f", "jsonl", "-o", str(out)])
    words = words_of(out.read_text())
    assert len(words) >= 5
    return words


def test_wav_piped_on_stdin_gives_the_words_of_the_file(tiny_stt, wav_file, file_words, capfd, monkeypatch):
    """A real OS pipe as this process's stdin, fed by a thread (the CLI in this process, to save a start-up)."""
    from dsmcli.cli import main

    read_end, write_end = os.pipe()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(os.fdopen(read_end, "rb")))
    data = wav_file.read_bytes()

    def feed():
        with os.fdopen(write_end, "wb") as pipe:
            for start in range(0, len(data), 4000):
                pipe.write(data[start : start + 4000])
                pipe.flush()

    writer = threading.Thread(target=feed)
    writer.start()
    capfd.readouterr()
    main(["transcribe", "-", "-m", tiny_stt, "-f", "jsonl"])
    writer.join()
    out, err = capfd.readouterr()
    assert err == ""  # no progress bar off a terminal
    assert words_of(out) == file_words


@pytest.mark.parametrize("kind", ["flac", "mp3"])
def test_encoded_audio_piped_on_stdin_gives_the_words_of_the_file(kind, tiny_stt, wav_file, tmp_path, capfd,
                                                                   monkeypatch):
    """`cat talk.mp3 | dsm transcribe -` (it said "not a WAV stream"): the words of `dsm transcribe talk.mp3`."""
    import shutil

    from dsmcli.cli import main

    if kind == "mp3" and shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (tools/setup.sh --test)")
    path = tmp_path / f"talk.{kind}"
    if kind == "mp3":
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav_file), "-q:a", "2", str(path)],
                       check=True)
    else:
        soundfile.write(path, soundfile.read(wav_file, dtype="int16")[0], SAMPLE_RATE, format="FLAC")
    main(["transcribe", str(path), "-m", tiny_stt, "-f", "jsonl", "-o", str(tmp_path / "file.jsonl")])
    expected = words_of((tmp_path / "file.jsonl").read_text())
    assert len(expected) >= 5
    read_end, write_end = os.pipe()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(os.fdopen(read_end, "rb")))
    data = path.read_bytes()

    def feed():
        with os.fdopen(write_end, "wb") as pipe:
            for start in range(0, len(data), 4000):
                pipe.write(data[start : start + 4000])
                pipe.flush()

    writer = threading.Thread(target=feed)
    writer.start()
    capfd.readouterr()
    main(["transcribe", "-", "-m", tiny_stt, "-f", "jsonl"])
    writer.join()
    out, err = capfd.readouterr()
    assert err == ""
    assert words_of(out) == expected


def read_ready(stream, timeout: float) -> bytes:
    """What the process wrote on ``stream`` within ``timeout`` seconds (b"" if nothing)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return os.read(stream.fileno(), 1 << 16) if ready else b""


def test_raw_pcm_piped_progressively_prints_words_before_stdin_closes(tiny_stt, pcm16, file_words):
    stereo = np.repeat(pcm16[:, None], 2, axis=1)  # both channels equal: the downmix gives the same samples
    data = stereo.astype("<i2").tobytes()
    piece = int(PIECE_SECONDS * SAMPLE_RATE) * 4
    process = dsm_process("transcribe", "-", "--raw", "--rate", SAMPLE_RATE, "--channels", "2", "-m", tiny_stt,
                          "-f", "jsonl", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, sent, deadline = b"", 0, time.monotonic() + STARTUP_SECONDS
    try:
        while b'"type": "Word"' not in out and time.monotonic() < deadline:
            if sent < len(data) * 3 // 4:  # keep the last quarter for after the first word
                process.stdin.write(data[sent : sent + piece])
                process.stdin.flush()
                sent += piece
            out += read_ready(process.stdout, 0.05 if sent < len(data) * 3 // 4 else 1.0)
        assert b'"type": "Word"' in out, "no word was printed while stdin was open"
        print(f"first word on stdout after {sent / len(data):.0%} of the audio was written")
        assert sent < len(data) and process.poll() is None  # stdin still open, process still running
        process.stdin.write(data[sent:])
        process.stdin.close()
        rest, err = process.stdout.read(), process.stderr.read()  # small: no pipe can fill up meanwhile
        process.wait(timeout=STARTUP_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0 and err == b"", err.decode()
    assert words_of((out + rest).decode()) == file_words


def test_ctrl_c_leaves_valid_outputs_and_exit_code_130(tiny_stt, bria_24k, tmp_path):
    wav = tmp_path / "talk.wav"
    soundfile.write(wav, bria_24k(None), SAMPLE_RATE, subtype="PCM_16")  # 45 s: still running at the signal
    out = tmp_path / "out"
    process = dsm_process("transcribe", wav, "-m", tiny_stt, "-f", "srt", "-f", "jsonl", "-f", "json", "-o", f"{out}/",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    jsonl, deadline = out / "talk.jsonl", time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        if jsonl.exists() and jsonl.read_text().count('"type": "Word"') >= 5:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=STARTUP_SECONDS)
    assert process.returncode == 130 and stdout == b""
    lines = stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsm: error: interrupted"), stderr.decode()
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]  # every line is whole JSON
    assert events[-1]["type"] == "Done" and events[-1]["interrupted"] is True
    words = [e["text"] for e in events if e["type"] == "Word"]
    document = json.loads((out / "talk.json").read_text())  # finalized
    assert [w["word"].strip() for s in document["segments"] for w in s["words"]] == words
    srt = (out / "talk.srt").read_text()
    cues = SRT_CUE.findall(srt)
    assert "".join(f"{n}\n{a} --> {b}\n{t}\n\n" for n, a, b, t in cues) == srt  # nothing torn
    assert [int(c[0]) for c in cues] == list(range(1, len(document["segments"]) + 1))
    assert [c[3] for c in cues] == [s["text"].strip() for s in document["segments"]]
    last_cue_end = cues[-1][2]
    assert last_cue_end < "00:00:40,000", "interrupted well before the end of the 45 s input"


def test_several_files_without_output_go_to_the_current_directory_with_progress_on_a_terminal(
        tiny_stt, wav_file, bria_24k, tmp_path):
    import pty

    soundfile.write(tmp_path / "second.wav", bria_24k(4.0, offset=20.0), SAMPLE_RATE, subtype="PCM_16")
    master, slave = pty.openpty()
    env = subprocess_env({**SINGLE_THREAD_ENV, "TERM": "xterm", "COLUMNS": "120"})
    process = subprocess.Popen([sys.executable, "-m", "dsmcli", "transcribe", str(wav_file), "second.wav",
                                "-m", tiny_stt], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    terminal = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16) if select.select([master], [], [], STARTUP_SECONDS)[0] else b""
        except OSError:  # EIO: the process closed the terminal
            chunk = b""
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    assert process.wait(timeout=STARTUP_SECONDS) == 0, terminal.decode(errors="replace")
    assert process.stdout.read() == b""  # several inputs: files, not stdout
    screen = terminal.decode(errors="replace")
    assert "talk.wav" in screen and "second.wav" in screen and f"{SECONDS:.1f}/{SECONDS:.1f} s" in screen
    assert "4.0/4.0 s" in screen
    for stem in ("talk", "second"):
        assert (tmp_path / f"{stem}.txt").read_text().strip()  # whisper's naming: <stem>.<ext> in the cwd
