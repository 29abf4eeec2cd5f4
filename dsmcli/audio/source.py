"""``open_audio``: any input (file, ``-`` for stdin, raw PCM) as float32 mono chunks at 24 kHz."""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from dsmcli.audio.decoders import DecodedStream, ffmpeg_path, open_ffmpeg, open_pcm_stream, open_soundfile
from dsmcli.audio.mp3check import check_mp3_complete
from dsmcli.audio.pcm import STREAM_READ_BYTES, ByteReader, PcmFormat
from dsmcli.audio.piped import open_piped
from dsmcli.audio.resample import StreamResampler
from dsmcli.constants import SAMPLE_RATE
from dsmcli.errors import InputError, UsageError

STDIN = "-"
STDIN_NAME = "<stdin>"
DEFAULT_CHUNK_SECONDS = 1.0
TEXT_SNIFF_BYTES = 4096
# Extensions libsndfile decodes; anything else goes to ffmpeg.
SOUNDFILE_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".w64"}
)


class AudioSource:
    """Iterator of float32 mono ``[n]`` chunks at ``SAMPLE_RATE`` (n > 0, varying).

    ``name`` names the input in messages; ``duration`` is its length in seconds when known
    in advance; ``rate``/``channels`` describe the source before conversion. Decoding errors
    (corrupt data, NaN/inf samples, no audio at all) raise ``InputError`` while iterating.
    The file or ffmpeg process is released at the end of the stream or on an error; use the
    source as a context manager, or ``close()``, to release it early.
    """

    def __init__(self, name: str, decoded: DecodedStream) -> None:
        self.name = name
        self.rate = decoded.rate
        self.channels = decoded.channels
        self.duration = decoded.duration
        self.samples = 0  # samples yielded so far, at SAMPLE_RATE
        self._decoded = decoded
        self._resampler = StreamResampler(decoded.rate, SAMPLE_RATE)
        self._done = False

    def __iter__(self) -> AudioSource:
        return self

    def __next__(self) -> np.ndarray:
        try:
            chunk = self._next_chunk()
        except BaseException:  # end of stream, decoding error or Ctrl-C: release at once
            self.close()
            raise
        self.samples += len(chunk)
        return chunk

    def _next_chunk(self) -> np.ndarray:
        while not self._done:
            block = next(self._decoded.blocks, None)
            if block is None:
                self._done = True
                chunk = self._resampler.flush()
            else:
                if not np.isfinite(block).all():
                    raise InputError(f"{self.name}: audio contains NaN or infinite samples")
                chunk = self._resampler.process(block)
            if len(chunk):
                return chunk
        if self.samples == 0:
            raise InputError(f"{self.name}: no audio samples")
        raise StopIteration

    @property
    def decoder_messages(self) -> int:
        """Messages the C decoder printed and we kept off stderr (damaged MP3 frames it skipped)."""
        quiet = self._decoded.native_stderr
        return 0 if quiet is None else quiet.dropped

    def close(self) -> None:
        """Release the decoder (idempotent)."""
        self._done = True
        blocks = self._decoded.blocks
        close_blocks = getattr(blocks, "close", None)
        if close_blocks is not None:
            close_blocks()
        if self._decoded.close is not None:
            self._decoded.close()
            self._decoded.close = None

    def __enter__(self) -> AudioSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def open_audio(
    source: str | Path,
    *,
    raw: bool = False,
    rate: int | None = None,
    channels: int | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    stdin: BinaryIO | None = None,
) -> AudioSource:
    """Open ``source`` (a path, or ``-`` for ``stdin``) for streaming decoding.

    Files go through libsndfile (wav/flac/ogg/mp3/...) or, for other extensions, ffmpeg,
    read ``chunk_seconds`` at a time. ``-`` reads stdin (a pipe) as bytes arrive, in constant
    memory: WAV (sizes may be unknown) in small reads, FLAC and Ogg through libsndfile, other
    formats (MP3, ...) through ffmpeg as a pipe filter (``dsmcli.audio.piped``). ``raw=True`` reads
    headerless signed 16-bit little-endian PCM at ``rate`` Hz (default ``SAMPLE_RATE``)
    with ``channels`` (default 1), from stdin or a file. Raises ``InputError`` when the
    input cannot be opened and ``UsageError`` for inconsistent arguments.
    """
    if chunk_seconds <= 0:
        raise UsageError(f"chunk_seconds must be positive, got {chunk_seconds}")
    raw_format = _raw_format(raw, rate, channels)
    if str(source) == STDIN:
        stream = stdin if stdin is not None else sys.stdin.buffer
        if raw_format is None:
            return AudioSource(STDIN_NAME, open_piped(stream, STDIN_NAME))
        return AudioSource(STDIN_NAME, open_pcm_stream(ByteReader(stream, STDIN_NAME), raw_format, STREAM_READ_BYTES))
    path = Path(source)
    name = str(source)
    _check_file(path, name)
    if raw_format is not None:
        file = open(path, "rb")
        decoded = open_pcm_stream(ByteReader(file, name), raw_format, _block_bytes(raw_format, chunk_seconds))
        decoded.close = file.close
        return AudioSource(name, decoded)
    return AudioSource(name, _open_encoded(path, name, chunk_seconds))


def _raw_format(raw: bool, rate: int | None, channels: int | None) -> PcmFormat | None:
    if not raw:
        if rate is not None or channels is not None:
            raise UsageError("--rate and --channels only apply to --raw input")
        return None
    rate = SAMPLE_RATE if rate is None else rate
    channels = 1 if channels is None else channels
    if rate < 1 or channels < 1:
        raise UsageError(f"raw input needs a positive rate and channel count, got {rate} Hz, {channels}")
    return PcmFormat(rate=rate, channels=channels)


def _block_bytes(pcm: PcmFormat, chunk_seconds: float) -> int:
    return max(1, round(chunk_seconds * pcm.rate)) * pcm.block_align


def _check_file(path: Path, name: str) -> None:
    if not path.exists():
        raise InputError(f"{name}: no such file")
    if not path.is_file():
        raise InputError(f"{name}: not a regular file")
    try:
        empty = path.stat().st_size == 0
    except OSError as error:
        raise InputError(f"{name}: cannot read ({error.strerror or error})") from error
    if empty:
        raise InputError(f"{name}: empty file")


def _is_text(path: Path) -> bool:
    """The file starts with UTF-8 text (no NUL byte): no audio format does."""
    try:
        with open(path, "rb") as file:
            head = file.read(TEXT_SNIFF_BYTES)
    except OSError:
        return False
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start >= len(head) - 3 and len(head) == TEXT_SNIFF_BYTES  # a character cut by the sniff
    return True


def _open_encoded(path: Path, name: str, chunk_seconds: float) -> DecodedStream:
    """libsndfile for its formats (ffmpeg as a fallback when present), else ffmpeg."""
    if path.suffix.lower() not in SOUNDFILE_EXTENSIONS:
        if _is_text(path):  # not "install ffmpeg to read .txt files"
            raise InputError(f"{name}: a text file, not audio")
        return open_ffmpeg(path, name, chunk_seconds)
    try:
        decoded = open_soundfile(path, name, chunk_seconds)
    except InputError as soundfile_error:
        if ffmpeg_path() is None:
            raise
        try:
            return open_ffmpeg(path, name, chunk_seconds)
        except InputError:
            raise soundfile_error from None
    if decoded.codec == "MP3":  # libmpg123 pads or shortens cut files without a word
        try:
            check_mp3_complete(path, name)
        except InputError:
            if decoded.close is not None:
                decoded.close()
            raise
    return decoded
