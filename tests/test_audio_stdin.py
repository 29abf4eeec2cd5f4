"""Streaming stdin: WAV headers parsed incrementally from a pipe, raw s16le, sample formats."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import threading

import numpy as np
import pytest
import soundfile
import soxr

from dsmcli.audio import open_audio
from dsmcli.constants import SAMPLE_RATE
from dsmcli.errors import InputError

UNKNOWN = 0xFFFF_FFFF


def tone(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    columns = [0.4 * np.sin(2 * np.pi * (300 + 200 * c) * t) for c in range(channels)]
    return np.stack(columns, axis=1).astype(np.float32)


def pcm16(samples: np.ndarray) -> bytes:
    return np.clip(np.rint(samples * 32768), -32768, 32767).astype("<i2").tobytes()


def streaming_header(rate: int, channels: int, riff_size=UNKNOWN, data_size=UNKNOWN, float32=False) -> bytes:
    """What ffmpeg writes to a pipe: extensible fmt for float, a LIST chunk, unknown sizes."""
    bits = 32 if float32 else 16
    block = channels * bits // 8
    if float32:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 4)
        fmt += struct.pack("<H", 3) + guid_tail
    else:
        fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
    info = b"INFOISFT\x0e\x00\x00\x00Lavf59.27.100\x00"
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"LIST"
        + struct.pack("<I", len(info))
        + info
        + b"data"
        + struct.pack("<I", data_size)
    )


def quantized(samples: np.ndarray) -> np.ndarray:
    """``samples`` as they come back from 16-bit PCM."""
    return (np.frombuffer(pcm16(samples), "<i2").reshape(samples.shape) / 32768).astype(np.float32)


def expected_24k(samples: np.ndarray, rate: int) -> np.ndarray:
    mono = samples.mean(axis=1, dtype=np.float32)
    return mono if rate == SAMPLE_RATE else soxr.resample(mono, rate, SAMPLE_RATE)


def read_stdin(data: bytes, **kwargs) -> np.ndarray:
    with open_audio("-", stdin=io.BufferedReader(io.BytesIO(data)), **kwargs) as audio:
        return np.concatenate(list(audio))


def test_first_chunk_arrives_before_the_writer_closes():
    samples = tone(16000, 2.0)
    payload = streaming_header(16000, 1) + pcm16(samples)
    read_fd, write_fd = os.pipe()
    first_chunk_seen = threading.Event()
    seen_before_close: list[bool] = []

    def slow_writer() -> None:
        with os.fdopen(write_fd, "wb", buffering=0) as pipe:
            half = len(payload) // 2
            for start in range(0, half, 1000):  # the first second, in small pieces
                pipe.write(payload[start : min(start + 1000, half)])
            first_chunk_seen.wait(timeout=20)
            seen_before_close.append(first_chunk_seen.is_set())
            pipe.write(payload[half:])

    thread = threading.Thread(target=slow_writer)
    thread.start()
    chunks = []
    with os.fdopen(read_fd, "rb") as stdin, open_audio("-", stdin=stdin) as audio:
        assert audio.name == "<stdin>" and audio.duration is None
        for chunk in audio:
            first_chunk_seen.set()
            chunks.append(chunk)
    thread.join()
    assert seen_before_close == [True]
    np.testing.assert_allclose(np.concatenate(chunks), expected_24k(quantized(samples), 16000), atol=1e-6)


@pytest.mark.parametrize("sizes", [(UNKNOWN, UNKNOWN), (0, 0)], ids=["0xFFFFFFFF", "zero"])
def test_unknown_sizes_read_to_the_end(sizes):
    samples = tone(44100, 0.5, channels=2)
    data = streaming_header(44100, 2, *sizes) + pcm16(samples) + b"\x01"  # a torn last frame
    np.testing.assert_allclose(read_stdin(data), expected_24k(quantized(samples), 44100), atol=1e-6)


def test_float_extensible_header_and_declared_size():
    samples = tone(SAMPLE_RATE, 0.25)
    body = samples.astype("<f4").tobytes()
    data = streaming_header(SAMPLE_RATE, 1, float32=True, data_size=len(body)) + body + b"junkjunk"
    np.testing.assert_array_equal(read_stdin(data), samples[:, 0])  # 24 kHz mono: no resampling


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_sample_formats_decode_like_libsndfile(subtype):
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(SAMPLE_RATE, 0.2, channels=2), SAMPLE_RATE, subtype=subtype, format="WAV")
    reference, _ = soundfile.read(io.BytesIO(buffer.getvalue()), dtype="float32", always_2d=True)
    np.testing.assert_allclose(read_stdin(buffer.getvalue()), reference.mean(axis=1), atol=1e-7)


def test_raw_s16le_stdin():
    samples = tone(8000, 0.5, channels=2)
    data = pcm16(samples)
    got = read_stdin(data, raw=True, rate=8000, channels=2)
    np.testing.assert_allclose(got, expected_24k(quantized(samples), 8000), atol=1e-6)
    default = read_stdin(pcm16(tone(SAMPLE_RATE, 0.1)), raw=True)  # 24 kHz mono by default
    assert len(default) == round(0.1 * SAMPLE_RATE)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"ID3\x04" + bytes(200), "not a readable MP3 stream"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "header ends before the audio data"),
        (b"RIFF\x00\x00\x00\x00WAVEdata\x00\x00\x00\x00", "before its format chunk"),
        (
            streaming_header(16000, 1)[:-8].replace(b"\x01\x00\x01\x00", b"\x07\x00\x01\x00", 1) + b"data\0\0\0\0",
            "unsupported WAV encoding",
        ),
        (b"", "empty stream"),
        (streaming_header(16000, 1), "no audio samples"),
    ],
    ids=["mp3", "cut-header", "data-first", "mu-law", "empty", "no-samples"],
)
def test_bad_stdin_is_an_input_error(data, message):
    with pytest.raises(InputError, match=message) as error:
        read_stdin(data)
    assert "\n" not in str(error.value) and str(error.value).startswith("<stdin>: ")


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (tools/setup.sh --test)")
def test_real_ffmpeg_pipe(shared_data, bria_24k):
    command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(shared_data / "bria.mp3"), "-t", "3"]
    command += ["-f", "wav", "-acodec", "pcm_f32le", "-"]
    with subprocess.Popen(command, stdout=subprocess.PIPE) as process:
        with open_audio("-", stdin=process.stdout) as audio:
            assert (audio.rate, audio.channels) == (44100, 1)
            samples = np.concatenate(list(audio))
    assert process.returncode == 0
    reference = bria_24k(3.0)
    assert len(samples) == pytest.approx(len(reference), abs=2)
    n = min(len(samples), len(reference)) - 200  # ffmpeg's mp3 decoder vs libmpg123: tiny differences
    assert np.abs(samples[:n] - reference[:n]).max() < 1e-3


# ------------------------------------------------------------------------------------- encoded audio on a pipe

ENCODERS = {"flac": {"format": "FLAC"}, "ogg": {"format": "OGG", "subtype": "VORBIS"}}
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (tools/setup.sh --test)")


def encoded(tmp_path, kind: str, samples: np.ndarray, rate: int):
    """``samples`` written as a ``kind`` file (mp3 through ffmpeg's LAME)."""
    path = tmp_path / f"talk.{kind}"
    if kind in ("mp3", "aac"):
        wav = tmp_path / "talk_source.wav"
        soundfile.write(wav, samples, rate, subtype="PCM_16")
        codec = ["-c:a", "libmp3lame", "-q:a", "4"] if kind == "mp3" else ["-c:a", "aac", "-f", "adts"]
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), *codec, str(path)], check=True)
    else:
        soundfile.write(path, samples, rate, **ENCODERS[kind])
    return path


def piped_slowly(data: bytes, first_part: float):
    """A real pipe: ``first_part`` of ``data`` written in small pieces, the rest only once a chunk was decoded."""
    read_fd, write_fd = os.pipe()
    decoded = threading.Event()
    waited: list[bool] = []

    def writer() -> None:
        with os.fdopen(write_fd, "wb", buffering=0) as pipe:
            cut = int(len(data) * first_part)
            for start in range(0, cut, 1000):
                pipe.write(data[start : min(start + 1000, cut)])
            waited.append(decoded.wait(timeout=20))
            pipe.write(data[cut:])

    thread = threading.Thread(target=writer)
    thread.start()
    return os.fdopen(read_fd, "rb"), decoded, thread, waited


@pytest.mark.parametrize("kind", ["flac", "ogg", pytest.param("mp3", marks=needs_ffmpeg),
                                  pytest.param("aac", marks=needs_ffmpeg)])
def test_encoded_audio_on_a_pipe_streams_like_the_file(tmp_path, kind):
    """`cat talk.mp3 | dsm transcribe -` was refused ("not a WAV stream"); now the samples of the file come out,
    the first ones before the writer has sent more than a third of the stream."""
    path = encoded(tmp_path, kind, tone(44100, 20.0, channels=2), 44100)  # long enough for Vorbis headers
    with open_audio(path) as audio:
        reference = np.concatenate(list(audio))
    stdin, decoded, thread, waited = piped_slowly(path.read_bytes(), 1 / 3)
    chunks = []
    with stdin, open_audio("-", stdin=stdin) as audio:
        assert (audio.name, audio.rate, audio.channels) == ("<stdin>", 44100, 2)
        for chunk in audio:
            decoded.set()
            chunks.append(chunk)
    thread.join()
    assert waited == [True], "nothing was decoded before the writer sent the rest"
    got = np.concatenate(chunks)
    if kind == "aac":  # ffmpeg both ways (file, pipe filter)
        assert abs(len(got) - len(reference)) <= 2048
        n = min(len(got), len(reference))
        np.testing.assert_allclose(got[:n], reference[:n], atol=1e-6)
    else:  # libsndfile both ways: the same samples
        np.testing.assert_array_equal(got, reference)


@needs_ffmpeg
def test_m4a_with_its_index_at_the_end_on_a_pipe_says_to_give_the_file(tmp_path):
    """ffmpeg cannot seek back on a pipe to the index that an M4A written without faststart keeps at its end."""
    wav, m4a = tmp_path / "talk.wav", tmp_path / "talk.m4a"
    soundfile.write(wav, tone(24000, 30.0), 24000, subtype="PCM_16")  # longer than ffmpeg's probe of the pipe
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    with open_audio(m4a) as audio:  # the file itself decodes
        assert sum(len(chunk) for chunk in audio) > 29 * 24000
    with pytest.raises(InputError, match="ffmpeg cannot decode it .*give the file"):
        with open(m4a, "rb") as stdin, open_audio("-", stdin=stdin) as audio:
            list(audio)


def test_flac_on_a_pipe_runs_in_constant_memory(tmp_path):
    """A 60 s stereo FLAC (~10 MB: noise does not compress) goes through with a bounded buffer."""
    import tracemalloc

    rng = np.random.default_rng(0)
    noise = (rng.standard_normal((60 * 44100, 2)) * 0.2).astype(np.float32)
    path = encoded(tmp_path, "flac", noise, 44100)
    size = path.stat().st_size
    assert size > 8_000_000
    with open(path, "rb") as stdin:
        tracemalloc.start()
        try:
            samples = 0
            with open_audio("-", stdin=stdin) as audio:
                for chunk in audio:
                    samples += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert samples == pytest.approx(60 * SAMPLE_RATE, abs=2)
    assert peak < 4_000_000, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB stream"


@needs_ffmpeg
def test_without_ffmpeg_other_formats_on_stdin_name_the_remedy(tmp_path, monkeypatch):
    path = encoded(tmp_path, "mp3", tone(16000, 0.5), 16000)
    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg there
    with pytest.raises(InputError, match=r"^<stdin>: install ffmpeg to read this format from stdin") as error:
        read_stdin(b"\x00\x00\x00\x20ftypM4A " + bytes(200))  # an MP4 audio header
    assert "\n" not in str(error.value)
    assert abs(len(read_stdin(path.read_bytes())) - round(0.5 * SAMPLE_RATE)) < 1200  # MP3 needs no ffmpeg


@needs_ffmpeg
def test_vbr_mp3_file_read_in_blocks_matches_one_read(tmp_path):
    """SoundFile.read seeks after every block; libmpg123 seeks a VBR MP3 only approximately, so every block after the
    first came from the wrong place (0.6 off on this tone). Blocks now equal one whole read, and ffmpeg's decode."""
    from dsmcli.audio.decoders import open_soundfile

    path = encoded(tmp_path, "mp3", tone(44100, 5.0, channels=2), 44100)
    assert b"Xing" in path.read_bytes()[:2000], "LAME -q:a 4 writes a VBR stream"
    whole, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    decoded = open_soundfile(path, path.name, 0.25)
    try:
        blocks = np.concatenate(list(decoded.blocks))
    finally:
        decoded.close()
    np.testing.assert_array_equal(blocks, whole)
