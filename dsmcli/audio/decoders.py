"""Block decoders: each yields float32 ``[frames, channels]`` blocks at the source rate.

* ``soundfile`` (libsndfile: wav, flac, ogg, mp3, aiff, ...) read block by block;
* ``ffmpeg`` run as a subprocess writing float WAV to a pipe, for every other format;
* a binary stream (stdin, a raw file) with a WAV header or raw s16le samples.

All of them keep memory bounded by one block, whatever the input length.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
import soundfile

from dsmcli.audio.native_stderr import DecoderStderr
from dsmcli.audio.pcm import ByteReader, PcmFormat, iter_pcm, read_wav_header
from dsmcli.errors import InputError

FFMPEG_WAV_ARGS = ("-vn", "-f", "wav", "-acodec", "pcm_f32le", "pipe:1")
FFPROBE_TIMEOUT_SECONDS = 30
MP3_CONTAINER = "MP3"  # libsndfile's format name; its libmpg123 decoder prints on damaged frames


@dataclass
class DecodedStream:
    """An open decoder: its blocks, source rate/channels, duration if known, and cleanup."""

    blocks: Iterator[np.ndarray]
    rate: int
    channels: int
    duration: float | None
    close: Callable[[], None] | None = None  # releases the file / process
    codec: str = ""  # libsndfile's container name ("MP3", "WAV", ...) when it decodes
    native_stderr: DecoderStderr | None = None  # the decoder's dropped C-level messages (damaged MP3 frames)


def open_soundfile(path: Path, name: str, block_seconds: float) -> DecodedStream:
    """Decode with libsndfile; raises ``InputError`` on unreadable, corrupt or cut files.

    libmpg123's C-level messages on damaged MP3s are kept off stderr and counted
    (``DecodedStream.native_stderr``)."""
    quiet = DecoderStderr()
    try:
        with quiet:
            file = soundfile.SoundFile(str(path))
    except (soundfile.LibsndfileError, RuntimeError) as error:
        quiet.close()
        raise InputError(f"{name}: not a readable audio file ({libsndfile_reason(error)})") from error
    duration = file.frames / file.samplerate if file.frames > 0 else None
    block = max(1, round(block_seconds * file.samplerate))
    blocks = soundfile_blocks(file, name, block, quiet if file.format == MP3_CONTAINER else None)

    def close() -> None:
        file.close()
        quiet.close()

    return DecodedStream(blocks, file.samplerate, file.channels, duration, close, file.format, quiet)


def soundfile_blocks(file: soundfile.SoundFile, name: str, block: int,
                      quiet: DecoderStderr | None) -> Iterator[np.ndarray]:
    with file:
        while True:
            try:
                with quiet if quiet is not None else nullcontext():
                    data = read_block(file, block)
            except (soundfile.LibsndfileError, RuntimeError) as error:
                raise InputError(f"{name}: corrupt audio data ({libsndfile_reason(error)})") from error
            if not len(data):
                return
            yield data


def read_block(file: soundfile.SoundFile, frames: int) -> np.ndarray:
    """The next ``frames`` (fewer at the end) as float32 ``[n, channels]``, by libsndfile's ``sf_readf_float``.

    Not ``SoundFile.read``: after every read it seeks to where it expects to be, and on a VBR MP3 libmpg123's seek
    is approximate, so every block after the first came from the wrong place (0.6 off on a 0.4 tone)."""
    out = np.empty((frames, file.channels), dtype=np.float32)
    count = soundfile._snd.sf_readf_float(file._file, soundfile._ffi.cast("float *", out.ctypes.data), frames)
    soundfile._error_check(file._errorcode)
    return out[:count]


def libsndfile_reason(error: Exception) -> str:
    """libsndfile's message without the path; its "does not exist" on bad data is misleading."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    reason = text.split(": ", 1)[-1] if text.startswith("Error opening") else text
    return "unrecognised or corrupt data" if reason.startswith("File does not exist") else reason


def ffmpeg_path() -> str | None:
    """The ffmpeg executable on PATH, if any."""
    return shutil.which("ffmpeg")


class FfmpegDecoder:
    """ffmpeg writing float WAV on its stdout (``command``), reading a file or its stdin (``feed``: a thread copying
    a stream into it); its stderr is kept for the error line."""

    def __init__(self, command: list[str], name: str, feed: Callable[[BinaryIO], None] | None = None,
                 hint: Callable[[list[str]], str] = lambda lines: "") -> None:
        self.name, self._hint = name, hint
        self._errors = tempfile.TemporaryFile()
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL if feed is None else subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._errors)
        self.reader = ByteReader(cast(BinaryIO, self._process.stdout), name)
        if feed is not None:
            threading.Thread(target=feed, args=(self._process.stdin,), daemon=True, name="dsm-ffmpeg-feed").start()

    def _messages(self) -> list[str]:
        self._errors.seek(0)
        return self._errors.read().decode("utf-8", "replace").strip().splitlines()

    def failure(self) -> InputError:
        """The error to raise when ffmpeg failed, quoting its last message."""
        self._stop()
        lines = self._messages()
        return InputError(f"{self.name}: ffmpeg cannot decode it ({lines[-1] if lines else 'no audio stream'})"
                          f"{self._hint(lines)}")

    def blocks(self, pcm: PcmFormat, block_bytes: int) -> Iterator[np.ndarray]:
        produced = False
        for block in iter_pcm(self.reader, pcm, None, block_bytes):
            produced = True
            yield block
        # ffmpeg exits 0 on some streams it could not read (an M4A with its index at the end): its message says why
        if self._process.wait() != 0 or (not produced and self._messages()):
            raise self.failure()

    def _stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self.reader.stream.close()
        self._process.wait()

    def close(self) -> None:
        self._stop()
        self._errors.close()

    def stream(self, block_frames: Callable[[PcmFormat], int], duration: float | None = None) -> DecodedStream:
        """Read ffmpeg's WAV header (its failure quoted if there is none) and stream its blocks of
        ``block_frames(format)`` frames."""
        try:
            header = read_wav_header(self.reader)
        except InputError:
            raise self.failure() from None
        pcm = header.format
        return DecodedStream(self.blocks(pcm, block_frames(pcm) * pcm.block_align), pcm.rate, pcm.channels, duration,
                             self.close)


def open_ffmpeg(path: Path, name: str, block_seconds: float) -> DecodedStream:
    """Decode anything ffmpeg reads, streaming its float WAV output through a pipe."""
    ffmpeg = ffmpeg_path()
    if ffmpeg is None:
        suffix = path.suffix or "this format"
        raise InputError(f"{name}: install ffmpeg to read {suffix} files")
    process = FfmpegDecoder([ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path),
                             *FFMPEG_WAV_ARGS], name)
    return process.stream(lambda pcm: max(1, round(block_seconds * pcm.rate)), _probe_duration(path))


def _probe_duration(path: Path) -> float | None:
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    command = [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=FFPROBE_TIMEOUT_SECONDS, check=False)
        return float(done.stdout.decode().strip())
    except (subprocess.SubprocessError, ValueError, OSError):
        return None


def open_pcm_stream(reader: ByteReader, raw: PcmFormat | None, read_bytes: int) -> DecodedStream:
    """A WAV stream (``raw is None``) or raw samples in the ``raw`` format, read as they arrive."""
    if raw is None:
        header = read_wav_header(reader)
        pcm, size = header.format, header.data_size
    else:
        pcm, size = raw, None
    duration = size / pcm.block_align / pcm.rate if size is not None else None
    step = max(pcm.block_align, read_bytes - read_bytes % pcm.block_align)
    return DecodedStream(iter_pcm(reader, pcm, size, step), pcm.rate, pcm.channels, duration)
