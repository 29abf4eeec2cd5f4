"""Decoding files to 24 kHz mono chunks: accuracy, bounded memory, and every bad input."""

from __future__ import annotations

import shutil
import subprocess
import tracemalloc

import numpy as np
import pytest
import soundfile
import soxr

from dsmcli.audio import FrameChunker, StreamResampler, WavWriter, open_audio
from dsmcli.audio.mp3check import frame_length
from dsmcli.constants import FRAME_SIZE, SAMPLE_RATE
from dsmcli.errors import InputError, UsageError

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (tools/setup.sh --test)")


def read_all(source, **kwargs) -> np.ndarray:
    with open_audio(source, **kwargs) as audio:
        chunks = list(audio)
    assert all(c.dtype == np.float32 and c.ndim == 1 and len(c) > 0 for c in chunks)
    return np.concatenate(chunks)


def stereo_noise(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(rate * seconds)) / rate
    left = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))
    right = 0.3 * np.sin(2 * np.pi * 1234 * t)
    return np.stack([left, right], axis=1).astype(np.float32)


def test_mp3_matches_one_shot_resampling(shared_data, bria_24k):
    with open_audio(shared_data / "bria.mp3", chunk_seconds=0.37) as audio:
        assert (audio.rate, audio.channels, audio.name) == (44100, 1, str(shared_data / "bria.mp3"))
        assert audio.duration == pytest.approx(44.955, abs=1e-3)
        samples = np.concatenate(list(audio))
        assert audio.samples == len(samples)
    expected = bria_24k()  # soundfile + soxr.resample of the whole file
    assert len(samples) == len(expected)
    np.testing.assert_allclose(samples, expected, atol=1e-6)


def test_stereo_44k_to_24k_mono_equals_soxr_one_shot(tmp_path):
    stereo = stereo_noise(44100, 3.0)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo, 44100, subtype="FLOAT")
    samples = read_all(path, chunk_seconds=0.05)
    expected = soxr.resample(stereo.mean(axis=1, dtype=np.float32), 44100, SAMPLE_RATE, quality="HQ")
    assert len(samples) == len(expected) == round(3.0 * SAMPLE_RATE)
    assert np.abs(samples - expected).max() <= 1e-6


def test_stream_resampler_chunking_does_not_matter():
    mono = stereo_noise(16000, 2.0)[:, 0]
    rng = np.random.default_rng(1)
    resampler = StreamResampler(16000)
    parts, start = [], 0
    while start < len(mono):
        size = int(rng.integers(1, 3000))
        parts.append(resampler.process(mono[start : start + size, None]))
        start += size
    parts.append(resampler.flush())
    np.testing.assert_allclose(np.concatenate(parts), soxr.resample(mono, 16000, SAMPLE_RATE), atol=1e-6)
    same_rate = StreamResampler(SAMPLE_RATE)
    np.testing.assert_array_equal(same_rate.process(mono[:100, None]), mono[:100])
    assert len(same_rate.flush()) == 0


def test_long_file_reads_in_bounded_memory(tmp_path):
    rate, minutes = 48000, 10
    block = (np.random.default_rng(0).standard_normal(rate * 10) * 0.1).astype(np.float32)
    path = tmp_path / "long.wav"
    with WavWriter(path, rate) as writer:
        for _ in range(minutes * 6):
            writer.write(block)
    whole_bytes = minutes * 60 * SAMPLE_RATE * 4  # the decoded signal, were it held at once
    tracemalloc.start()
    try:
        probe = np.zeros(whole_bytes // 4, dtype=np.float32)  # numpy buffers are traced
        assert tracemalloc.get_traced_memory()[1] >= whole_bytes
        del probe
        tracemalloc.reset_peak()
        total = 0
        with open_audio(path) as audio:
            for chunk in audio:
                total += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == minutes * 60 * SAMPLE_RATE
    assert peak < 4_000_000, f"peak {peak / 1e6:.1f} MB while decoding a {whole_bytes / 1e6:.0f} MB signal"


def test_frame_chunker_exact_frames_and_zero_padded_tail():
    rng = np.random.default_rng(2)
    signal = rng.standard_normal(5 * FRAME_SIZE + 123).astype(np.float32)
    chunker, frames, start = FrameChunker(), [], 0
    while start < len(signal):
        size = int(rng.integers(1, 2 * FRAME_SIZE))
        out = chunker.push(signal[start : start + size])
        assert out.shape[1:] == (FRAME_SIZE,)
        frames.append(out)
        start += size
    assert chunker.pending == 123
    tail = chunker.flush()
    frames.append(tail)
    got = np.concatenate(frames)
    assert got.shape == (6, FRAME_SIZE)
    np.testing.assert_array_equal(got.reshape(-1)[: len(signal)], signal)
    assert not got[5, 123:].any()
    assert chunker.flush().shape == (0, FRAME_SIZE)


def test_raw_file_input(tmp_path):
    stereo = stereo_noise(16000, 1.0)
    pcm = np.clip(np.rint(stereo * 32768), -32768, 32767).astype("<i2")
    path = tmp_path / "audio.pcm"
    path.write_bytes(pcm.tobytes())
    samples = read_all(path, raw=True, rate=16000, channels=2)
    expected = soxr.resample((pcm / 32768).astype(np.float32).mean(axis=1, dtype=np.float32), 16000, SAMPLE_RATE)
    np.testing.assert_allclose(samples, expected, atol=1e-6)
    with pytest.raises(UsageError):
        open_audio(path, rate=16000)


def lame_mp3(tmp_path) -> bytes:
    path = tmp_path / "lame.mp3"
    soundfile.write(path, stereo_noise(44100, 3.0), 44100, format="MP3")
    return path.read_bytes()


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, shared_data) -> dict[str, tuple[str, str]]:
    """name → (file, expected message part)."""
    tmp_path = tmp_path_factory.mktemp("bad_inputs")
    bria = (shared_data / "bria.mp3").read_bytes()
    lame = lame_mp3(tmp_path)
    boundary = 0
    for _ in range(4):  # the Xing frame and 3 audio frames: a clean cut the Xing count catches
        boundary += frame_length(lame[boundary : boundary + 4])
    files = {
        "empty.wav": (b"", "empty file"),
        "text.wav": (b"this is not audio\n" * 50, "not a readable audio file"),
        "garbage.mp3": (bytes(range(256)) * 20, "not a readable audio file"),
        "cut.mp3": (bria[: len(bria) // 2 + 101], "truncated MP3"),
        "cut_at_frame.mp3": (lame[:boundary], r"truncated MP3 \(3 of \d+ frames\)"),
        "header_only.wav": (wav_bytes(np.zeros((0, 1), np.float32)), "no audio samples"),
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: (str(tmp_path / name), message) for name, (_, message) in files.items()}


def wav_bytes(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    import io

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name", ["empty.wav", "text.wav", "garbage.mp3", "cut.mp3", "cut_at_frame.mp3", "header_only.wav"]
)
def test_bad_files_raise_one_line_input_errors(bad_inputs, name):
    path, message = bad_inputs[name]
    with pytest.raises(InputError, match=message) as error:
        read_all(path)
    assert "\n" not in str(error.value) and name in str(error.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_audio(tmp_path / "nope.wav")
    with pytest.raises(InputError, match="not a regular file"):
        open_audio(tmp_path)


def test_corrupt_mp3_is_rejected_but_small_junk_and_tags_are_not(tmp_path, shared_data):
    bria = (shared_data / "bria.mp3").read_bytes()
    garbage = np.random.default_rng(3).integers(0, 256, 50000, dtype=np.uint8).tobytes()
    path = tmp_path / "corrupt.mp3"
    path.write_bytes(bria[:1000] + garbage)  # libmpg123 would resync and play noise
    with pytest.raises(InputError, match=r"corrupt MP3 \(invalid data at byte \d+\)"):
        read_all(path)
    boundary = 0
    while boundary < len(bria) // 2:
        boundary += frame_length(bria[boundary : boundary + 4])
    id3v1 = b"TAG" + bytes(125)
    path.write_bytes(bria[:boundary] + garbage[:300] + bria[boundary:] + id3v1)
    assert len(read_all(path)) == pytest.approx(45 * SAMPLE_RATE, rel=0.01)


def test_nan_and_inf_samples_are_rejected(tmp_path):
    samples = np.zeros((16000, 1), np.float32)
    samples[8000, 0] = np.nan
    path = tmp_path / "nan.wav"
    path.write_bytes(wav_bytes(samples, subtype="FLOAT"))
    with pytest.raises(InputError, match="NaN or infinite"):
        read_all(path)
    samples[8000, 0] = np.inf
    path.write_bytes(wav_bytes(samples, subtype="FLOAT"))
    with pytest.raises(InputError, match="NaN or infinite"):
        read_all(path)


def test_other_formats_without_ffmpeg_name_the_remedy(tmp_path, monkeypatch):
    path = tmp_path / "voice.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(100))
    monkeypatch.setattr("dsmcli.audio.decoders.shutil.which", lambda name: None)
    with pytest.raises(InputError, match=r"install ffmpeg to read \.m4a files"):
        open_audio(path)


@needs_ffmpeg
def test_ffmpeg_path_decodes_losslessly(tmp_path):
    stereo = stereo_noise(48000, 2.0)
    source = tmp_path / "src.wav"
    soundfile.write(source, stereo, 48000, subtype="PCM_16")
    m4a = tmp_path / "voice.m4a"  # ALAC: lossless, so samples must match exactly
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(source), "-c:a", "alac", str(m4a)], check=True
    )
    with open_audio(m4a) as audio:
        assert (audio.rate, audio.channels) == (48000, 2)
        assert audio.duration == pytest.approx(2.0, abs=0.01)
        samples = np.concatenate(list(audio))
    pcm16, _ = soundfile.read(source, dtype="float32", always_2d=True)
    expected = soxr.resample(pcm16.mean(axis=1, dtype=np.float32), 48000, SAMPLE_RATE)
    np.testing.assert_allclose(samples, expected, atol=1e-6)


@needs_ffmpeg
def test_ffmpeg_failure_is_an_input_error(tmp_path):
    path = tmp_path / "fake.m4a"
    path.write_bytes(b"\x00\x01not a movie\xff\n" * 100)  # binary junk (text is reported as text, not audio)
    with pytest.raises(InputError, match="ffmpeg cannot decode it") as error:
        read_all(path)
    assert "\n" not in str(error.value)
