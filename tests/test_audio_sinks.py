"""Audio writers: WAV headers byte by byte, finalizing on Ctrl-C, pipes, raw, FLAC/OGG/MP3."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile

from dsmcli.audio import RawWriter, WavWriter, open_audio, open_sink, player_command
from dsmcli.constants import SAMPLE_RATE
from dsmcli.errors import OutputError


def ramp(n: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, n, dtype=np.float32)


def header(rate: int, channels: int, data_size: int, riff_size: int | None = None) -> bytes:
    """The 44-byte PCM16 header, spelled out field by field."""
    return b"".join(
        [
            b"RIFF",
            struct.pack("<I", data_size + 36 if riff_size is None else riff_size),
            b"WAVE",
            b"fmt ",
            struct.pack("<I", 16),
            struct.pack("<H", 1),
            struct.pack("<H", channels),
            struct.pack("<I", rate),
            struct.pack("<I", rate * channels * 2),
            struct.pack("<H", channels * 2),
            struct.pack("<H", 16),
            b"data",
            struct.pack("<I", data_size),
        ]
    )


def test_wav_bytes_and_sizes_kept_valid_while_writing(tmp_path):
    path = tmp_path / "out.wav"
    samples = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.7, -3.0, 0.25 / 32768, 0.75 / 32768], np.float32)
    with WavWriter(path, SAMPLE_RATE) as writer:
        assert path.read_bytes() == header(SAMPLE_RATE, 1, 0)
        writer.write(samples)
        # before close, the file on disk is already a complete WAV of what was written
        assert path.read_bytes()[:44] == header(SAMPLE_RATE, 1, 2 * len(samples))
        writer.write(ramp(1000))
        assert soundfile.info(path).frames == len(samples) + 1000
    data = path.read_bytes()
    assert data[:44] == header(SAMPLE_RATE, 1, 2 * (len(samples) + 1000))
    pcm = np.frombuffer(data[44 : 44 + 2 * len(samples)], "<i2").tolist()
    assert pcm == [0, 16384, -16384, 32767, -32768, 32767, -32768, 0, 1]  # scaled by 2^15, clipped, rounded
    back, rate = soundfile.read(path, dtype="float32")
    assert rate == SAMPLE_RATE
    np.testing.assert_allclose(back[len(samples) :], ramp(1000), atol=1 / 32768)


def test_stereo_wav(tmp_path):
    stereo = np.stack([ramp(500), -ramp(500)], axis=1)
    with open_sink(tmp_path / "s.wav", 16000, channels=2) as sink:
        sink.write(stereo)
        with pytest.raises(ValueError, match=r"\[n, 2\]"):
            sink.write(ramp(10))
    assert (tmp_path / "s.wav").read_bytes()[:44] == header(16000, 2, 500 * 4)
    back, _ = soundfile.read(tmp_path / "s.wav", dtype="float32")
    np.testing.assert_allclose(back, stereo, atol=1 / 32768)


def test_wav_is_finalized_on_ctrl_c(tmp_path):
    path = tmp_path / "interrupted.wav"
    with pytest.raises(KeyboardInterrupt):
        with open_sink(path) as sink:
            for _ in range(3):
                sink.write(ramp(1920))
            raise KeyboardInterrupt
    assert sink.closed
    info = soundfile.info(path)
    assert (info.frames, info.samplerate, info.channels) == (3 * 1920, SAMPLE_RATE, 1)


def test_ctrl_c_between_a_write_and_its_count_still_sizes_the_header(tmp_path, monkeypatch):
    """The interrupt can land after the bytes reached the file and before ``frames`` counted them (seen in the
    speak Ctrl-C test); the header is sized from the file, and a trailing partial sample is cut."""
    path = tmp_path / "late.wav"
    writer = WavWriter(path, SAMPLE_RATE, channels=2)
    writer.write(np.zeros((1920, 2), np.float32))
    original = writer._put

    def put_then_interrupt(data: bytes) -> None:
        original(data)
        raise KeyboardInterrupt  # after the bytes, before `self.frames += ...`

    monkeypatch.setattr(writer, "_put", put_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        writer.write(np.ones((1920, 2), np.float32) * 0.5)
    writer.stream.write(b"\x01\x02\x03")  # and a torn sample frame
    writer.close()
    data = path.read_bytes()
    assert data[:44] == header(SAMPLE_RATE, 2, 2 * 1920 * 4) and len(data) == 44 + 2 * 1920 * 4
    back, _ = soundfile.read(path, dtype="float32")
    assert back.shape == (3840, 2) and np.allclose(back[1920:], 0.5, atol=1 / 32768)


def test_streaming_header_on_a_pipe_and_read_back():
    read_fd, write_fd = os.pipe()
    received = bytearray()
    with os.fdopen(write_fd, "wb") as pipe_out:
        writer = WavWriter(pipe_out, SAMPLE_RATE)
        writer.write(ramp(4800))
        writer.close()
    with os.fdopen(read_fd, "rb") as pipe_in:
        received += pipe_in.read()
    assert bytes(received[:44]) == header(SAMPLE_RATE, 1, 0xFFFF_FFFF, riff_size=0xFFFF_FFFF)
    samples = np.concatenate(list(open_audio("-", stdin=io.BufferedReader(io.BytesIO(bytes(received))))))
    np.testing.assert_allclose(samples, ramp(4800), atol=1 / 32768)


STDOUT_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np
    from dsmcli.audio import open_sink
    with open_sink("-", 16000, raw=sys.argv[1] == "raw") as sink:
        sink.write(np.full(100, 0.5, np.float32))
    """
)


@pytest.mark.parametrize("mode", ["pipe", "file", "raw"])
def test_stdout_wav_and_raw(tmp_path, mode):
    command = [sys.executable, "-c", STDOUT_SCRIPT, mode]
    if mode == "file":  # stdout redirected to a file is seekable: the header gets real sizes
        with open(tmp_path / "out.wav", "wb") as out:
            subprocess.run(command, stdout=out, check=True, timeout=120)
        data = (tmp_path / "out.wav").read_bytes()
    else:
        data = subprocess.run(command, capture_output=True, check=True, timeout=120).stdout
    body = struct.pack("<h", 16384) * 100
    if mode == "raw":
        assert data == body
    elif mode == "pipe":
        assert data == header(16000, 1, 0xFFFF_FFFF, riff_size=0xFFFF_FFFF) + body
    else:
        assert data == header(16000, 1, 200) + body


def test_raw_writer_bytes(tmp_path):
    with RawWriter(tmp_path / "a.raw") as writer:
        writer.write(np.array([0.5, -1.0, 2.0], np.float32))
    assert (tmp_path / "a.raw").read_bytes() == struct.pack("<3h", 16384, -32768, 32767)


@pytest.mark.parametrize(("suffix", "tolerance"), [(".flac", 1 / 32768), (".ogg", 0.05), (".mp3", 0.05)])
def test_compressed_formats_by_extension(tmp_path, suffix, tolerance):
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    signal = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / f"out{suffix}"
    with open_sink(path) as sink:
        for start in range(0, SAMPLE_RATE, 1920):
            sink.write(signal[start : start + 1920])
    back = np.concatenate(list(open_audio(path)))
    if suffix == ".flac":
        np.testing.assert_allclose(back, signal, atol=tolerance)
    else:  # lossy codecs: compare loudness and pitch, not samples
        assert abs(np.sqrt(np.mean(back**2)) - np.sqrt(np.mean(signal**2))) < tolerance
        peak = np.argmax(np.abs(np.fft.rfft(back[: SAMPLE_RATE // 2]))) * 2
        assert abs(peak - 440) <= 4


def test_open_sink_refusals(tmp_path):
    (tmp_path / "exists.wav").write_bytes(b"x")
    with pytest.raises(OutputError, match="exists"):
        open_sink(tmp_path / "exists.wav")
    open_sink(tmp_path / "exists.wav", force=True).close()
    with pytest.raises(OutputError, match="unknown audio extension"):
        open_sink(tmp_path / "out.m4a")
    with pytest.raises(OutputError, match="no such directory"):
        open_sink(tmp_path / "missing" / "out.wav")
    with open_sink(tmp_path / "forced.bin", raw=True) as sink:
        assert isinstance(sink, RawWriter)


def test_player_command_names_the_format():
    command = player_command(SAMPLE_RATE)
    assert command.startswith(("aplay ", "ffplay "))
    assert "24000" in command and ("S16_LE" in command or "s16le" in command)
    assert command.endswith("-")
