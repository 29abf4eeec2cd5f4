"""Audio sinks: WAV (16-bit PCM, header kept valid as it grows), raw s16le, FLAC/OGG/MP3.

Every sink writes as samples arrive and is a context manager whose exit finalizes the file,
also on Ctrl-C. On a seekable target the WAV header is rewritten after each write, so even
a killed process leaves a playable file; on a pipe it carries "unknown" sizes, as ffmpeg
and sox write them.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, cast

import numpy as np
import soundfile

from dsmcli.constants import SAMPLE_RATE
from dsmcli.errors import OutputError

STDOUT = "-"
PCM16_SCALE = 32768  # float [-1, 1) ↔ int16, the inverse of how PCM16 is read
PCM16_BYTES = 2
WAVE_FORMAT_PCM = 0x0001
WAV_HEADER_BYTES = 44
RIFF_SIZE_OFFSET, DATA_SIZE_OFFSET = 4, 40
UNKNOWN_SIZE = 0xFFFF_FFFF  # what streaming writers put in RIFF sizes
MAX_WAV_DATA = UNKNOWN_SIZE - (WAV_HEADER_BYTES - 8)
SOUNDFILE_FORMATS = {".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS"), ".mp3": ("MP3", "MPEG_LAYER_III")}
RAW_EXTENSIONS = (".raw", ".pcm")


def to_pcm16(samples: np.ndarray) -> bytes:
    """float32 ``[n]`` / ``[n, channels]`` → interleaved little-endian int16 bytes (clipped)."""
    scaled = np.rint(np.asarray(samples, dtype=np.float32) * PCM16_SCALE)
    return np.clip(scaled, -PCM16_SCALE, PCM16_SCALE - 1).astype("<i2").tobytes()


def _frames(samples: np.ndarray, channels: int) -> np.ndarray:
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 1 and channels == 1:
        return array
    if array.ndim != 2 or array.shape[1] != channels:
        raise ValueError(f"expected [n] or [n, {channels}] samples, got shape {array.shape}")
    return array


def wav_header(rate: int, channels: int, data_size: int | None) -> bytes:
    """A 44-byte PCM16 WAV header; ``data_size=None`` writes the streaming "unknown" sizes."""
    block_align = channels * PCM16_BYTES
    if data_size is None or data_size > MAX_WAV_DATA:
        riff_size = data_len = UNKNOWN_SIZE
    else:
        riff_size, data_len = data_size + WAV_HEADER_BYTES - 8, data_size
    fmt = struct.pack("<HHIIHH", WAVE_FORMAT_PCM, channels, rate, rate * block_align, block_align, 8 * PCM16_BYTES)
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVEfmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + (b"data" + struct.pack("<I", data_len))
    )


def _binary_stdout() -> BinaryIO:
    if sys.platform == "win32":  # no CRLF translation of samples
        import msvcrt

        msvcrt.setmode(sys.stdout.fileno(), os.O_BINARY)
    sys.stdout.flush()
    return sys.stdout.buffer


class AudioSink:
    """Base of the sinks: ``write(samples)`` then ``close()`` (or use ``with``)."""

    name: str
    closed: bool = False

    def write(self, samples: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> AudioSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class _ByteSink(AudioSink):
    """A binary target: a path (created), ``-`` (stdout) or an open binary stream (borrowed)."""

    def __init__(self, target: str | Path | BinaryIO, channels: int, atomic: bool = False) -> None:
        self.channels = channels
        self.frames = 0
        if isinstance(target, (str, Path)) and str(target) == STDOUT:
            self.stream, self.name, self._owned = _binary_stdout(), "<stdout>", False
        elif isinstance(target, (str, Path)):
            self.name, self._owned = str(target), True
            try:
                self.stream = _open_atomic(target) if atomic else open(target, "wb")
            except OSError as error:
                raise OutputError(f"cannot write {target}: {error.strerror or error}") from error
        else:
            self.stream, self.name, self._owned = target, getattr(target, "name", "<stream>"), False

    def _put(self, data: bytes) -> None:
        try:
            self.stream.write(data)
            self.stream.flush()
        except OSError as error:
            raise OutputError(f"cannot write {self.name}: {error.strerror or error}") from error

    def write(self, samples: np.ndarray) -> None:
        """Append float32 ``[n]`` (mono) or ``[n, channels]`` samples."""
        frames = _frames(samples, self.channels)
        self._put(to_pcm16(frames))
        self.frames += len(frames)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._finalize()
        finally:
            if self._owned:
                self.stream.close()

    def _finalize(self) -> None:
        self.stream.flush()

    def discard(self) -> None:
        """Drop the temporary of an atomic file (a failed or interrupted input of a corpus run)."""
        from dsmcli.outputs.atomic import discard

        discard(self.stream)


class RawWriter(_ByteSink):
    """Headerless signed 16-bit little-endian PCM (play with ``player_command``)."""

    def __init__(self, target: str | Path | BinaryIO, rate: int = SAMPLE_RATE, channels: int = 1,
                 atomic: bool = False) -> None:
        super().__init__(target, channels, atomic)
        self.rate = rate


class WavWriter(_ByteSink):
    """16-bit PCM WAV written incrementally; sizes patched in place when the target seeks."""

    def __init__(self, target: str | Path | BinaryIO, rate: int = SAMPLE_RATE, channels: int = 1,
                 atomic: bool = False) -> None:
        super().__init__(target, channels, atomic)
        self.rate = rate
        self._header_at = self._seekable_position()
        self._put(wav_header(rate, channels, 0 if self._header_at is not None else None))

    def _seekable_position(self) -> int | None:
        try:
            return self.stream.tell() if self.stream.seekable() else None
        except OSError:
            return None

    def write(self, samples: np.ndarray) -> None:
        super().write(samples)
        self._patch_sizes()

    def _patch_sizes(self) -> None:
        if self._header_at is None:
            return
        header = wav_header(self.rate, self.channels, self.frames * self.channels * PCM16_BYTES)
        try:
            end = self.stream.tell()
            self.stream.seek(self._header_at + RIFF_SIZE_OFFSET)
            self.stream.write(header[RIFF_SIZE_OFFSET : RIFF_SIZE_OFFSET + 4])
            self.stream.seek(self._header_at + DATA_SIZE_OFFSET)
            self.stream.write(header[DATA_SIZE_OFFSET : DATA_SIZE_OFFSET + 4])
            self.stream.seek(end)
            self.stream.flush()
        except OSError as error:
            raise OutputError(f"cannot write {self.name}: {error.strerror or error}") from error

    def _finalize(self) -> None:
        self._count_written_frames()
        self._patch_sizes()
        self.stream.flush()

    def _count_written_frames(self) -> None:
        """Size the header by what the file holds: a Ctrl-C can land after a write and before ``frames`` counts
        it. A trailing partial sample frame (an interrupted write) is cut."""
        if self._header_at is None:
            return
        frame_bytes = self.channels * PCM16_BYTES
        try:
            self.stream.flush()
            written = self.stream.seek(0, os.SEEK_END) - self._header_at - WAV_HEADER_BYTES
            self.frames = max(0, written) // frame_bytes
            if written % frame_bytes:
                self.stream.truncate(self._header_at + WAV_HEADER_BYTES + self.frames * frame_bytes)
                self.stream.seek(0, os.SEEK_END)
        except OSError as error:
            raise OutputError(f"cannot write {self.name}: {error.strerror or error}") from error


class SoundfileWriter(AudioSink):
    """FLAC (16-bit), Ogg Vorbis or MP3 through libsndfile, chosen by the file extension."""

    def __init__(self, path: str | Path, rate: int = SAMPLE_RATE, channels: int = 1, atomic: bool = False) -> None:
        suffix = Path(path).suffix.lower()
        if suffix not in SOUNDFILE_FORMATS:
            raise OutputError(f"{path}: cannot write {suffix or 'extension-less'} audio")
        container, subtype = SOUNDFILE_FORMATS[suffix]
        self.name, self.channels = str(path), channels
        self._target = _atomic_target(path) if atomic else None  # written to its temporary, renamed on close
        try:
            self._file = soundfile.SoundFile(str(self._target.temp if self._target else path), "w", rate, channels,
                                             subtype, format=container)
        except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
            raise OutputError(f"cannot write {path}: {error}") from error

    def write(self, samples: np.ndarray) -> None:
        frames = np.clip(_frames(samples, self.channels), -1.0, 1.0)
        self._file.write(frames)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._file.close()
            if self._target is not None:
                self._target.commit()

    def discard(self) -> None:
        """Drop the temporary of an atomic file (a failed or interrupted input of a corpus run)."""
        if self._target is not None:
            self._target.discard()


def open_sink(
    target: str | Path, rate: int = SAMPLE_RATE, channels: int = 1, *, raw: bool = False, force: bool = False,
    atomic: bool = False,
) -> AudioSink:
    """The sink for ``target``: ``-`` is stdout (WAV, or raw s16le with ``raw``); a path picks
    by extension (.wav or none, .raw/.pcm, .flac, .ogg, .mp3). Refuses to overwrite without ``force``. ``atomic``:
    the file is written under a temporary name and renamed when closed (``dsmcli.outputs.atomic``)."""
    if str(target) == STDOUT:
        return RawWriter(STDOUT, rate, channels) if raw else WavWriter(STDOUT, rate, channels)
    path = Path(target)
    suffix = path.suffix.lower()
    if not raw and suffix not in ("", ".wav", *RAW_EXTENSIONS, *SOUNDFILE_FORMATS):
        raise OutputError(f"{path}: unknown audio extension (use .wav, .flac, .ogg, .mp3 or .raw)")
    if path.is_dir():
        raise OutputError(f"{path} is a directory")
    if path.exists() and not force:
        raise OutputError(f"{path} exists (use --force to overwrite)")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: no such directory {path.parent}")
    if raw or suffix in RAW_EXTENSIONS:
        return RawWriter(path, rate, channels, atomic)
    if suffix in ("", ".wav"):  # a file name without extension gets WAV
        return WavWriter(path, rate, channels, atomic)
    return SoundfileWriter(path, rate, channels, atomic)


def _open_atomic(path: str | Path) -> BinaryIO:
    from dsmcli.outputs.atomic import open_binary

    return cast(BinaryIO, open_binary(path))


def _atomic_target(path: str | Path):  # -> dsmcli.outputs.atomic.AtomicTarget
    from dsmcli.outputs.atomic import AtomicTarget

    return AtomicTarget(path)


def player_command(rate: int = SAMPLE_RATE, channels: int = 1) -> str:
    """The command line that plays raw s16le on stdin: aplay if present, else ffplay.

    (ffplay older than 5.1 spells ``-ch_layout mono`` as ``-ac 1``.)
    """
    if shutil.which("aplay") or not shutil.which("ffplay") and sys.platform.startswith("linux"):
        return f"aplay -q -r {rate} -f S16_LE -c {channels} -t raw -"
    layout = "mono" if channels == 1 else "stereo" if channels == 2 else f"{channels}c"
    return f"ffplay -hide_banner -nodisp -autoexit -f s16le -ar {rate} -ch_layout {layout} -i -"
