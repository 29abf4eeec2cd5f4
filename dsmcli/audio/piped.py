"""Encoded audio on a pipe (``cat talk.mp3 | dsm transcribe -``), decoded as the bytes arrive, in constant memory.

The first bytes say what the stream is: WAV goes to the incremental WAV parser; FLAC and Ogg to libsndfile
through a forward-only file object; MP3 to libsndfile reading an OS pipe (its pipe mode: given a seekable
object, libmpg123 scans a Xing-less MP3 whole at open), fed by a thread with what follows the ID3v2 tag (which
libsndfile cannot skip on a pipe). The same decoder as for the file, so the same samples. Anything else (m4a,
webm, ...) goes to ffmpeg run as a pipe filter: a thread copies the pipe into ffmpeg, whose float WAV output is
parsed like any WAV stream.
"""

from __future__ import annotations

import io
import os
import signal
import threading
from typing import BinaryIO, cast

import soundfile

from dsmcli.audio.decoders import (DecodedStream, FfmpegDecoder, ffmpeg_path, libsndfile_reason, open_pcm_stream,
                                    soundfile_blocks)
from dsmcli.audio.mp3check import frame_length, id3v2_size
from dsmcli.audio.native_stderr import DecoderStderr
from dsmcli.audio.pcm import STREAM_READ_BYTES, ByteReader
from dsmcli.errors import InputError

MAGIC_BYTES = 12
PIPE_READ_BYTES = 64 * 1024
HISTORY_BYTES = 1 << 20  # bytes kept behind the read position for libsndfile's short backward seeks
FFMPEG_PIPE_ARGS = ("-nostdin", "-hide_banner", "-loglevel", "error", "-probesize", "65536", "-i", "pipe:0",
                    "-vn", "-f", "wav", "-acodec", "pcm_f32le", "pipe:1")
PIPED_BLOCK_SECONDS = 0.1  # libsndfile block on a pipe: chunks leave soon after their bytes arrive


def stream_kind(head: bytes) -> str:
    """What a stream starting with ``head`` holds: wav, flac, ogg, mp3, empty or unknown."""
    if not head:
        return "empty"
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"ID3") or frame_length(head[:4]) is not None:  # (AAC's ADTS sync is no MPEG frame)
        return "mp3"
    return "unknown"


class Prefixed(io.RawIOBase):
    """``head`` (bytes already read to sniff the format), then the rest of ``stream``."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        super().__init__()
        self._head, self._stream = head, stream
        self._read = getattr(stream, "read1", stream.read)

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        if self._head:
            size = len(self._head) if size < 0 else size
            part, self._head = self._head[:size], self._head[size:]
            return part
        return self._read(PIPE_READ_BYTES if size < 0 else size)

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = self.read1(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class ForwardFile(io.RawIOBase):
    """A pipe as a seekable file for libsndfile: reads block until the bytes arrive; backward seeks work within
    the last ``HISTORY_BYTES``. The end is unknown: ``end`` is what ``seek(0, SEEK_END)`` answers. FLAC wants a
    far end (it then reads from the start as from any file); Ogg wants 0 (a far end makes it search backwards for
    the last page, forever; with 0 it reads to the end of the stream). (Never raises from the callbacks libsndfile
    calls: it would print tracebacks.)"""

    FAR_END = 1 << 62

    def __init__(self, stream: Prefixed, end: int) -> None:
        super().__init__()
        self._stream, self._buffer, self._base, self._position, self._eof = stream, bytearray(), 0, 0, False
        self._end = end

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _fill(self, upto: int) -> None:
        while self._base + len(self._buffer) < upto and not self._eof:
            data = self._stream.read1(PIPE_READ_BYTES)
            if not data:
                self._eof = True
            self._buffer += data

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if self._position >= self.FAR_END // 2:  # past the unknown end: nothing there
            return 0
        self._fill(self._position + len(buffer))
        offset = self._position - self._base
        if offset < 0:  # further back than the history: a decoder this module does not use
            return 0
        data = self._buffer[offset : offset + len(buffer)]
        buffer[: len(data)] = data
        self._position += len(data)
        drop = self._position - self._base - HISTORY_BYTES
        if drop > 0:
            del self._buffer[:drop]
            self._base += drop
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._end}[whence]
        self._position = max(0, start + offset)
        return self._position

    def tell(self) -> int:
        return self._position


def open_soundfile_pipe(stream: Prefixed, name: str, kind: str) -> DecodedStream:
    """FLAC or Ogg on a pipe through libsndfile."""
    try:
        file = soundfile.SoundFile(ForwardFile(stream, ForwardFile.FAR_END if kind == "flac" else 0))
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise InputError(f"{name}: not a readable audio stream ({libsndfile_reason(error)})") from error
    block = max(1, round(PIPED_BLOCK_SECONDS * file.samplerate))
    return DecodedStream(soundfile_blocks(file, name, block, None), file.samplerate, file.channels, None,
                         file.close, file.format)


def _no_sigpipe() -> None:
    """In a feeding thread: a write to a pipe whose reader is gone raises EPIPE instead of killing the process
    (``dsm`` sets SIGPIPE to its default action so that ``dsm ... | head`` ends quietly)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})


def _copy(source: Prefixed, sink: BinaryIO) -> None:
    """Copy ``source`` into ``sink`` until either ends, then close ``sink`` (the reader then sees the end)."""
    _no_sigpipe()
    try:
        while data := source.read1(PIPE_READ_BYTES):
            sink.write(data)
            sink.flush()
    except (OSError, ValueError):  # the reader stopped (it failed, or was closed)
        pass
    finally:
        try:
            sink.close()
        except OSError:
            pass


def _skip(stream: Prefixed, count: int) -> None:
    while count > 0:
        data = stream.read1(min(count, PIPE_READ_BYTES))
        if not data:
            return
        count -= len(data)


def open_mp3_pipe(stream: Prefixed, head: bytes, name: str) -> DecodedStream:
    """MP3 on a pipe: libsndfile in pipe mode reading an OS pipe that a thread fills with the stream past its ID3v2
    tag. libmpg123's messages on damaged frames are kept off stderr (counted), as for files."""
    _skip(stream, id3v2_size(head[:10]))
    read_fd, write_fd = os.pipe()
    feeder = threading.Thread(target=_copy, args=(stream, os.fdopen(write_fd, "wb")), daemon=True,
                              name="dsm-mp3-feed")
    feeder.start()
    quiet = DecoderStderr()
    try:
        with quiet:
            file = soundfile.SoundFile(read_fd, closefd=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        try:
            os.close(read_fd)  # libsndfile may have closed it already; the feeder then stops on EPIPE
        except OSError:
            pass
        quiet.close()
        raise InputError(f"{name}: not a readable MP3 stream ({libsndfile_reason(error)})") from error
    block = max(1, round(PIPED_BLOCK_SECONDS * file.samplerate))

    def close() -> None:
        file.close()
        quiet.close()

    return DecodedStream(soundfile_blocks(file, name, block, quiet), file.samplerate, file.channels, None, close,
                         file.format, quiet)


def _partial_file_hint(lines: list[str]) -> str:
    if any("partial file" in line for line in lines):
        return " (an MP4/M4A whose index is at its end cannot be read from a pipe: give the file)"
    return ""


def open_ffmpeg_pipe(stream: Prefixed, name: str) -> DecodedStream:
    ffmpeg = ffmpeg_path()
    if ffmpeg is None:
        raise InputError(f"{name}: install ffmpeg to read this format from stdin (WAV, FLAC, Ogg and MP3 are read "
                         f"without it; raw s16le with --raw)")
    process = FfmpegDecoder([ffmpeg, *FFMPEG_PIPE_ARGS], name, feed=lambda stdin: _copy(stream, stdin),
                            hint=_partial_file_hint)
    return process.stream(lambda pcm: max(1, STREAM_READ_BYTES // pcm.block_align))


def open_piped(stream: BinaryIO, name: str) -> DecodedStream:
    """Sniff the stream's first bytes and open the decoder that streams it (see the module docstring)."""
    reader = ByteReader(stream, name)
    head = reader.read_exact(MAGIC_BYTES)
    kind = stream_kind(head)
    prefixed = Prefixed(head, stream)
    if kind == "empty":
        raise InputError(f"{name}: empty stream (pipe audio: WAV, FLAC, Ogg, MP3, ...; or raw s16le with --raw)")
    if kind == "wav":
        return open_pcm_stream(ByteReader(cast(BinaryIO, prefixed), name), None, STREAM_READ_BYTES)
    if kind in ("flac", "ogg"):
        return open_soundfile_pipe(prefixed, name, kind)
    if kind == "mp3":
        return open_mp3_pipe(prefixed, head, name)
    return open_ffmpeg_pipe(prefixed, name)
