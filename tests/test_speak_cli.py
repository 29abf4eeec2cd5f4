"""``dsm speak`` / ``dsm dialog`` / ``dsm voices`` end to end through the CLI (subprocess, offline tiny fixtures).

Byte-level output checks (WAV header fields and sizes, raw PCM, stdout, SRT/JSON word times consistent with the
frame count), streaming text from stdin, Ctrl-C, seeds, batches, and the one-line errors with their exit codes.
"""

from __future__ import annotations

import json
import re
import signal
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_dsm, subprocess_env
from test_speak_harness import DIALOG, MONOLOGUE, our_voice, synthesize

from dsmcli.audio.sinks import to_pcm16
from dsmcli.tts.model import TtsModel

FRAME_BYTES = 1920 * 2  # one 80 ms frame of 16-bit mono
HEADER = 44
FINAL_PADDING, MAX_DELAY = 4, 2  # audio frames = end_step + FINAL_PADDING - MAX_DELAY
PARALLEL_RUNS = 4
TEXT = "Hello there, this is the tiny model reading a short line of text for the command line test."


@pytest.fixture(scope="module")
def tts_args(tiny_tts, tiny_voices) -> list[str]:
    return ["--model", tiny_tts, "--voice-repo", tiny_voices, "--voice", "voices/alice.wav"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "line.txt"
    path.write_text(TEXT + "\n", encoding="utf-8")
    return path


def _parallel(*calls: tuple, cwd: Path | None = None) -> list[subprocess.CompletedProcess]:
    """``run_dsm(*args)`` for each ``args`` tuple, concurrently (most of a short run is interpreter start-up)."""
    with ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as pool:
        return list(pool.map(lambda args: run_dsm(*args, cwd=cwd), calls))


def _in_process(capsys, *args) -> subprocess.CompletedProcess:
    """``dsm ARGS`` through ``dsmcli.cli.main`` in this process (same code path as the subprocess, minus a 4 s
    interpreter start): for the checks that fail before any model runs."""
    from dsmcli.cli import main

    capsys.readouterr()
    code = 0
    try:
        main([str(arg) for arg in args])
    except SystemExit as stopped:
        code = stopped.code or 0
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out.encode(), captured.err.encode())


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc


def _one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("dsm: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def _parse_wav(data: bytes) -> tuple[dict, bytes]:
    riff, riff_size, wave, fmt, fmt_size = struct.unpack("<4sI4s4sI", data[:20])
    tag, channels, rate, byte_rate, align, bits = struct.unpack("<HHIIHH", data[20:36])
    chunk, data_size = struct.unpack("<4sI", data[36:44])
    assert (riff, wave, fmt, fmt_size, chunk) == (b"RIFF", b"WAVE", b"fmt ", 16, b"data")
    header = dict(riff_size=riff_size, tag=tag, channels=channels, rate=rate, byte_rate=byte_rate, align=align,
                  bits=bits, data_size=data_size)
    return header, data[HEADER:]


@pytest.fixture(scope="module")
def greedy_wav(tmp_path_factory, tts_args, text_file) -> Path:
    """The greedy reference output of TEXT: WAV + SRT + JSON (other tests compare with it)."""
    out = tmp_path_factory.mktemp("greedy") / "line.wav"
    _ok(run_dsm("speak", text_file, *tts_args, "--temperature", "0", "-o", out, "--srt", "--json"))
    return out


def test_wav_srt_json_are_consistent(greedy_wav):
    header, pcm = _parse_wav(greedy_wav.read_bytes())
    assert header == dict(riff_size=36 + len(pcm), tag=1, channels=1, rate=24000, byte_rate=48000, align=2,
                          bits=16, data_size=len(pcm))
    assert len(pcm) % FRAME_BYTES == 0 and np.abs(np.frombuffer(pcm, "<i2")).max() > 1000
    doc = json.loads(greedy_wav.with_suffix(".json").read_text(encoding="utf-8"))
    words = [w for segment in doc["segments"] for w in segment["words"]]
    assert "".join(w["word"] for w in words).strip() == TEXT
    end_step = round(words[-1]["end"] * 12.5)  # the last word ends at end_step
    assert len(pcm) // FRAME_BYTES == end_step + FINAL_PADDING - MAX_DELAY
    assert doc["duration"] == pytest.approx(len(pcm) / 2 / 24000)
    steps = [w["start"] * 12.5 for w in words]  # consumption steps: whole, increasing, the first forced at step 2
    assert all(abs(s - round(s)) < 1e-6 for s in steps) and steps == sorted(set(steps)) and round(steps[0]) == 2
    srt = greedy_wav.with_suffix(".srt").read_text(encoding="utf-8")
    assert srt.startswith("1\n00:00:00,") and srt.endswith("\n\n")
    assert f" --> 00:00:{words[-1]['end']:06.3f}".replace(".", ",") in srt


def test_stdout_wav_and_raw(greedy_wav, tts_args, text_file):
    _, pcm = _parse_wav(greedy_wav.read_bytes())
    wav = _ok(run_dsm("speak", text_file, *tts_args, "--temperature", "0", "-o", "-"))
    header, data = _parse_wav(wav.stdout)
    assert (header["riff_size"], header["data_size"]) == (0xFFFFFFFF, 0xFFFFFFFF)  # pipe: sizes unknown
    assert data == pcm and wav.stderr == b""
    raw = _ok(run_dsm("speak", "--text", TEXT, *tts_args, "--temperature", "0", "-o", "-", "--raw"))
    assert raw.stdout == pcm
    assert raw.stderr.decode().count("-r 24000") + raw.stderr.decode().count("-ar 24000") == 1


def test_seeded_sampling_reproducible(tmp_path, tts_args):
    """Same seed, same bytes (a different seed giving different audio is checked in test_speak_batch.py)."""
    first, second = tmp_path / "a.wav", tmp_path / "b.raw"
    text = ["--text", DIALOG[2], *tts_args, "--seed", "3"]
    for proc in _parallel(("speak", *text, "-o", first), ("speak", *text, "-o", second)):
        _ok(proc)
    assert first.read_bytes()[HEADER:] == second.read_bytes() and len(second.read_bytes()) > 20 * FRAME_BYTES


def _popen_speak(args: list, out: Path) -> subprocess.Popen:
    """``dsm speak - ARGS -o OUT`` with stdin open; SIGINT back to its default (the test may run with it ignored)."""
    return subprocess.Popen([sys.executable, "-m", "dsmcli", "speak", "-", *map(str, args), "-o", str(out)],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_audio(proc: subprocess.Popen, out: Path, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        size = out.stat().st_size if out.exists() else 0
        if size > HEADER:
            return size
        time.sleep(0.1)
    raise AssertionError(f"no audio written within {timeout} s (exit {proc.poll()})")


def test_streaming_stdin_equals_whole_text(tmp_path, tts_args):
    """Words piped one by one: audio is written before stdin closes, and the result equals the whole text."""
    whole = tmp_path / "whole.wav"
    (tmp_path / "text.txt").write_text(MONOLOGUE, encoding="utf-8")
    with ThreadPoolExecutor(max_workers=1) as pool:
        reference = pool.submit(run_dsm, "speak", tmp_path / "text.txt", *tts_args, "--temperature", "0", "-o", whole)
        out = tmp_path / "streamed.wav"
        proc = _popen_speak([*tts_args, "--temperature", "0"], out)
        words = MONOLOGUE.split(" ")
        for word in words[:25]:
            proc.stdin.write(word.encode() + b" ")
            proc.stdin.flush()
        assert _wait_for_audio(proc, out) > HEADER and proc.poll() is None  # audio while stdin is still open
        proc.stdin.write(" ".join(words[25:]).encode())
        proc.stdin.close()
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
        _ok(reference.result())
    assert out.read_bytes() == whole.read_bytes()


def test_ctrl_c_leaves_a_valid_wav(tmp_path, tts_args):
    out = tmp_path / "cut.wav"
    proc = _popen_speak(tts_args, out)
    proc.stdin.write(MONOLOGUE.encode())  # never closed: generation waits for more text
    proc.stdin.flush()
    _wait_for_audio(proc, out)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert proc.stderr.read().decode().strip().splitlines()[-1] == "dsm: interrupted"
    proc.stdin.close()
    header, pcm = _parse_wav(out.read_bytes())
    assert header["data_size"] == len(pcm) > 0 and header["riff_size"] == 36 + len(pcm)
    assert len(pcm) % FRAME_BYTES == 0


def test_dialog_with_named_voices(tmp_path, tiny_tts, tiny_voices, capsys):
    script = tmp_path / "talk.txt"
    script.write_text("\n".join(f"{name}: {line}" for name, line in zip(["Alice", "Bob"], DIALOG)), encoding="utf-8")
    out = tmp_path / "talk.wav"
    base = ["dialog", script, "--model", tiny_tts, "--voice-repo", tiny_voices]
    _ok(run_dsm(*base, "--temperature", "0", "--voices", "Bob=voices/bob.wav", "--voices", "Alice=voices/alice.wav",
                "-o", out, "--srt"))
    model = TtsModel.load(tiny_tts, voice_repo=tiny_voices, dtype=torch.float32)
    expected = synthesize(model, our_voice(model, ["voices/alice.wav", "voices/bob.wav"]), DIALOG[:2])
    assert _parse_wav(out.read_bytes())[1] == to_pcm16(expected.pcm)
    assert "It speaks now." in out.with_suffix(".srt").read_text(encoding="utf-8")
    _one_line_error(_in_process(capsys, *base, "--voice", "voices/bob.wav"), 2, "2 speakers", "Alice, Bob")
    _one_line_error(_in_process(capsys, *base, "--voices", "Carol=voices/bob.wav"), 2, "no voice for speaker Alice")


def test_batch_of_files_with_one_failure(tmp_path, tts_args, text_file, greedy_wav):
    second = tmp_path / "other.txt"
    second.write_text(DIALOG[2], encoding="utf-8")
    outdir = tmp_path / "out"
    proc = run_dsm("speak", text_file, tmp_path / "missing.txt", second, *tts_args, "--temperature", "0",
                   "-o", f"{outdir}/")
    err = proc.stderr.decode()
    errors = [line for line in err.splitlines() if line.startswith("dsm: error: ")]
    assert proc.returncode == 5 and len(errors) == 1 and "missing.txt: no such file" in errors[0], err
    wrote = sorted(line for line in err.splitlines() if line.startswith("dsm: wrote "))
    assert [re.sub(r"\(\d+\.\d s\)$", "(T s)", line) for line in wrote] == [
        f"dsm: wrote {outdir / name} (T s)" for name in ("line.wav", "other.wav")], err
    assert sorted(p.name for p in outdir.iterdir()) == ["line.wav", "other.wav"]
    batched = np.frombuffer(_parse_wav((outdir / "line.wav").read_bytes())[1], "<i2").astype(int)
    single = np.frombuffer(_parse_wav(greedy_wav.read_bytes())[1], "<i2").astype(int)
    assert batched.shape == single.shape and np.abs(batched - single).max() <= 2  # batch-of-2 float rounding


def test_prefix_model_with_any_audio_voice(tmp_path, tiny_tts_prefix, shared_data):
    out = tmp_path / "clone.flac"
    _ok(run_dsm("speak", "--text", DIALOG[2], "--model", tiny_tts_prefix, "--voice", shared_data / "loona.mp3",
                "--temperature", "0", "-o", out))
    import soundfile

    audio, rate = soundfile.read(str(out))
    assert rate == 24000 and audio.ndim == 1 and len(audio) % 1920 == 0 and len(audio) > 1920 * 20


def test_voices_command(tiny_tts, tiny_tts_prefix, tiny_voices, capsys):
    as_json = _ok(run_dsm("voices", "--model", tiny_tts_prefix, "--voice-repo", tiny_voices, "--json"))
    assert [(v["name"], v["kind"]) for v in json.loads(as_json.stdout)] == [
        ("voices/alice.wav", "audio_prefix"), ("voices/bob.wav", "audio_prefix")]
    listed = _in_process(capsys, "voices", "--model", tiny_tts, "--voice-repo", tiny_voices)
    assert listed.returncode == 0 and listed.stdout.decode().split() == ["voices/alice.wav", "voices/bob.wav"]


def test_bad_inputs_are_one_line_errors(tmp_path, tts_args, tiny_tts, tiny_voices, text_file, capsys, monkeypatch):
    """Each failure: one line on stderr, no traceback, the documented exit code, nothing written. Three go through a
    subprocess (an error before the model loads, and two during generation); the rest run in-process."""
    (tmp_path / "empty.txt").write_text(" \n\t\n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("Hello wörld".encode("latin-1"))
    bare = tmp_path / "bare.wav"
    bare.write_bytes(b"RIFF")  # a .wav with no embedding beside it
    base = ["--model", tiny_tts, "--voice-repo", tiny_voices]
    subprocesses = [
        (("speak", tmp_path / "latin1.txt", *tts_args), 4, ["UTF-8", "0xf6", "offset 7"]),
        (("speak", text_file, *tts_args, "-o", "/proc/dsm-test.wav"), 1, ["cannot write /proc/dsm-test.wav"]),
    ]
    for proc, (_, code, needles) in zip(_parallel(*(args for args, _, _ in subprocesses), cwd=tmp_path),
                                        subprocesses):
        _one_line_error(proc, code, *needles)
    streamed = run_dsm("speak", "-", *tts_args, input=b"\xef\xbb\xbfok \xc3\x28 no", cwd=tmp_path)
    _one_line_error(streamed, 4, "<stdin>", "offset 6")
    monkeypatch.chdir(tmp_path)
    in_process = [
        (("speak", tmp_path / "empty.txt", *tts_args), 4, ["empty"]),
        (("speak", "--text", "  ", *tts_args), 4, ["empty"]),
        (("speak", text_file, *base, "--voice", "voices/carol.wav"), 4, ["unknown voice voices/carol.wav"]),
        (("speak", text_file, *base, "--voice", "../voices/alice.wav"), 4, ["'..'"]),
        (("speak", text_file, *base, "--voice", bare), 4, ["embedding", "tts-0.75b"]),
        (("speak", text_file, *tts_args, "-o", tmp_path / "nowhere" / "x.wav"), 1, ["no such directory"]),
        (("speak", text_file, *tts_args, "-o", "x.mp4"), 2, ["unknown audio extension"]),
        (("speak", text_file, *tts_args, "--cfg", "2.2"), 2, ["1.0, 1.5, 2.0"]),
        (("speak", text_file, *tts_args, "--n-q", "9"), 2, ["1..8"]),
        (("speak", text_file, text_file, *tts_args, "-o", "-"), 2, ["several inputs"]),
        (("speak", "-", text_file, *tts_args), 2, ["stdin"]),
        (("speak", text_file, "--model", tiny_voices), 3, []),
    ]
    for args, code, needles in in_process:
        _one_line_error(_in_process(capsys, *args), code, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.wav", "empty.txt", "latin1.txt"]  # nothing written
