"""PCM sample formats and an incremental WAV header parser for pipes (no seeking, small reads).

ffmpeg and sox write WAV to a pipe with unknown sizes (0 or 0xFFFFFFFF): such data runs
to the end of the stream.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from dsmcli.errors import InputError

UNKNOWN_SIZES = (0, 0xFFFF_FFFF)
WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
FMT_BASE_SIZE = 16
FMT_EXTENSIBLE_SIZE = 40
EXTENSIBLE_SUBFORMAT_OFFSET = 24  # the subformat GUID starts with the format tag
STREAM_READ_BYTES = 4096  # small reads: chunks leave as soon as bytes arrive


class SampleEncoding(enum.Enum):
    INT = "int"  # 8-bit unsigned, 16/24/32-bit signed little-endian
    FLOAT = "float"  # 32/64-bit IEEE little-endian


_VALID_BITS = {SampleEncoding.INT: (8, 16, 24, 32), SampleEncoding.FLOAT: (32, 64)}


@dataclass(frozen=True)
class PcmFormat:
    """Interleaved little-endian PCM: ``rate`` Hz, ``channels``, ``bits`` per sample."""

    rate: int
    channels: int
    encoding: SampleEncoding = SampleEncoding.INT
    bits: int = 16

    def __post_init__(self) -> None:
        if self.rate < 1 or self.channels < 1:
            raise InputError(f"invalid PCM format: {self.rate} Hz, {self.channels} channels")
        if self.bits not in _VALID_BITS[self.encoding]:
            raise InputError(f"unsupported PCM format: {self.bits}-bit {self.encoding.value}")

    @property
    def block_align(self) -> int:
        """Bytes per frame (one sample of every channel)."""
        return self.channels * self.bits // 8

    def decode(self, data: bytes) -> np.ndarray:
        """Whole frames of ``data`` → float32 ``[frames, channels]`` in [-1, 1]."""
        samples: np.ndarray
        if self.encoding is SampleEncoding.FLOAT:
            samples = np.frombuffer(data, dtype=f"<f{self.bits // 8}").astype(np.float32)
        elif self.bits == 8:
            samples = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128) / 128
        elif self.bits == 24:
            triplets = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
            widened = np.zeros((len(triplets), 4), dtype=np.uint8)
            widened[:, 1:] = triplets  # sample << 8 as a little-endian int32
            samples = widened.view("<i4")[:, 0].astype(np.float32) / 2.0**31
        else:
            samples = np.frombuffer(data, dtype=f"<i{self.bits // 8}").astype(np.float32)
            samples /= 2.0 ** (self.bits - 1)
        return samples.astype(np.float32, copy=False).reshape(-1, self.channels)


class ByteReader:
    """Small reads from a binary stream; ``read1`` returns as soon as any bytes arrived."""

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self.stream = stream
        self.name = name
        self._read = getattr(stream, "read1", stream.read)

    def read_some(self, limit: int) -> bytes:
        """Up to ``limit`` bytes, blocking only until some are available; b"" at the end."""
        return self._read(limit)

    def read_exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes, or fewer at the end of the stream."""
        parts, have = [], 0
        while have < size:
            part = self._read(size - have)
            if not part:
                break
            parts.append(part)
            have += len(part)
        return b"".join(parts)


@dataclass(frozen=True)
class WavHeader:
    """What precedes the samples: their format and byte count (``None``: to the end)."""

    format: PcmFormat
    data_size: int | None


def read_wav_header(reader: ByteReader) -> WavHeader:
    """Parse a RIFF/RF64 WAVE header up to the start of the ``data`` chunk."""
    riff = reader.read_exact(12)
    if len(riff) < 12 or riff[:4] not in (b"RIFF", b"RF64") or riff[8:12] != b"WAVE":
        raise InputError(f"{reader.name}: not a WAV stream (pipe WAV, or raw s16le with --raw)")
    pcm: PcmFormat | None = None
    while True:
        chunk = reader.read_exact(8)
        if len(chunk) < 8:
            raise InputError(f"{reader.name}: WAV header ends before the audio data")
        chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if chunk_id == b"data":
            if pcm is None:
                raise InputError(f"{reader.name}: WAV data comes before its format chunk")
            unknown = size in UNKNOWN_SIZES or riff[:4] == b"RF64"
            return WavHeader(pcm, None if unknown else size)
        if size == 0xFFFF_FFFF:
            raise InputError(f"{reader.name}: WAV chunk {chunk_id!r} has no size")
        body = reader.read_exact(size + size % 2)  # chunks are padded to even sizes
        if len(body) < size:
            raise InputError(f"{reader.name}: WAV header is truncated")
        if chunk_id == b"fmt ":
            pcm = _parse_fmt(body[:size], reader.name)


def _parse_fmt(body: bytes, name: str) -> PcmFormat:
    if len(body) < FMT_BASE_SIZE:
        raise InputError(f"{name}: WAV format chunk is too short")
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", body[:FMT_BASE_SIZE])
    if tag == WAVE_FORMAT_EXTENSIBLE and len(body) >= FMT_EXTENSIBLE_SIZE:
        tag = struct.unpack("<H", body[EXTENSIBLE_SUBFORMAT_OFFSET : EXTENSIBLE_SUBFORMAT_OFFSET + 2])[0]
    encodings = {WAVE_FORMAT_PCM: SampleEncoding.INT, WAVE_FORMAT_IEEE_FLOAT: SampleEncoding.FLOAT}
    if tag not in encodings:
        raise InputError(f"{name}: unsupported WAV encoding (format tag {tag:#06x}); convert to PCM")
    pcm = PcmFormat(rate=rate, channels=channels, encoding=encodings[tag], bits=bits)
    if block_align != pcm.block_align:
        raise InputError(f"{name}: unsupported WAV layout ({bits}-bit samples in {block_align}-byte frames)")
    return pcm


def iter_pcm(
    reader: ByteReader, pcm: PcmFormat, data_size: int | None, read_bytes: int = STREAM_READ_BYTES
) -> Iterator[np.ndarray]:
    """Decoded float32 ``[frames, channels]`` blocks as bytes arrive (a torn last frame is dropped)."""
    remaining = data_size
    pending = b""
    while remaining is None or remaining > 0:
        want = read_bytes if remaining is None else min(read_bytes, remaining)
        data = reader.read_some(want)
        if not data:
            return
        if remaining is not None:
            remaining -= len(data)
        data = pending + data
        usable = len(data) - len(data) % pcm.block_align
        pending = data[usable:]
        if usable:
            yield pcm.decode(data[:usable])
