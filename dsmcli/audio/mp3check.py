"""Detect truncated or corrupt MP3 files, which libmpg123 silently pads, shortens or skips.

Walks the MPEG audio frame headers (cheap: 4 bytes per ~26 ms frame, through ``mmap``): a
last frame running past the end of the file, or fewer frames than a Xing/Info header
announces, means the file was cut; more invalid bytes between frames than a decoder would
quietly resync over (4 KiB or 1 % of the file) means it is corrupt. ID3v2 tags are skipped
wherever they are; trailing ID3v1/APE/Lyrics3 tags and zero padding end the walk.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from dsmcli.errors import InputError

ID3V2_HEADER = 10
ID3V2_FOOTER_FLAG = 0x10
MPEG1, MPEG2, MPEG25 = 3, 2, 0  # version bits
LAYER1, LAYER2, LAYER3 = 3, 2, 1  # layer bits
XING_TAGS = (b"Xing", b"Info")
XING_FRAMES_FLAG = 0x1
TRAILING_TAGS = (b"TAG", b"APE", b"LYR")  # ID3v1, APEv2 ("APETAGEX"), Lyrics3 ("LYRICSBEGIN")
JUNK_MIN_BYTES = 4096  # invalid bytes tolerated between frames (decoders resync over them)
JUNK_FRACTION = 100  # ... or 1 % of the file, whichever is larger

_BITRATES_KBPS = {
    (MPEG1, LAYER1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (MPEG1, LAYER2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (MPEG1, LAYER3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (MPEG2, LAYER1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (MPEG2, LAYER2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (MPEG2, LAYER3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {MPEG1: (44100, 48000, 32000), MPEG2: (22050, 24000, 16000), MPEG25: (11025, 12000, 8000)}


def frame_length(header: bytes) -> int | None:
    """Byte length of the MPEG audio frame starting with ``header`` (4 bytes), if valid."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer = (header[1] >> 3) & 3, (header[1] >> 1) & 3
    bitrate_index, rate_index, padding = header[2] >> 4, (header[2] >> 2) & 3, (header[2] >> 1) & 1
    if version not in _SAMPLE_RATES or layer == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    table_version = MPEG1 if version == MPEG1 else MPEG2
    bitrate = _BITRATES_KBPS[(table_version, layer)][bitrate_index] * 1000
    rate = _SAMPLE_RATES[version][rate_index]
    if layer == LAYER1:
        return (12 * bitrate // rate + padding) * 4
    if layer == LAYER3 and version != MPEG1:
        return 72 * bitrate // rate + padding
    return 144 * bitrate // rate + padding


def _xing_frames(frame: bytes) -> int | None:
    """Frame count announced by a Xing/Info header in the first frame, if any."""
    for tag in XING_TAGS:
        at = frame.find(tag, 4)
        if at >= 0 and at + 12 <= len(frame):
            flags = int.from_bytes(frame[at + 4 : at + 8], "big")
            return int.from_bytes(frame[at + 8 : at + 12], "big") if flags & XING_FRAMES_FLAG else None
    return None


def id3v2_size(header: bytes) -> int:
    """Bytes of the ID3v2 tag whose 10-byte header is ``header`` (header, body and footer); 0 if it is none."""
    if len(header) < ID3V2_HEADER or not header.startswith(b"ID3"):
        return 0
    size = 0
    for byte in header[6:10]:  # "syncsafe": 7 bits per byte
        size = (size << 7) | (byte & 0x7F)
    footer = ID3V2_HEADER if header[5] & ID3V2_FOOTER_FLAG else 0
    return ID3V2_HEADER + size + footer


def _id3v2_size(data: mmap.mmap, position: int) -> int:
    """Bytes of the ID3v2 tag at ``position`` (a header cut by the end of the file counts as its 10 bytes)."""
    return id3v2_size(data[position : position + ID3V2_HEADER]) or ID3V2_HEADER


def _is_frame_chain(data: mmap.mmap, position: int) -> bool:
    """A frame at ``position`` followed by another frame (or by the end of the file)."""
    length = frame_length(data[position : position + 4])
    if length is None:
        return False
    after = position + length
    return after == len(data) or (after + 4 <= len(data) and frame_length(data[after : after + 4]) is not None)


def _resync(data: mmap.mmap, position: int, budget: int) -> int | None:
    """Next frame chain after ``position`` within ``budget`` bytes, else ``None``."""
    limit = min(len(data) - 4, position + budget)
    at = data.find(b"\xff", position + 1, limit + 1)
    while 0 <= at <= limit:
        if _is_frame_chain(data, at):
            return at
        at = data.find(b"\xff", at + 1, limit + 1)
    return None


def check_mp3_complete(path: Path, name: str) -> None:
    """Raise ``InputError`` if the MP3 file at ``path`` is cut short or full of invalid data."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        end = len(data)
        budget = max(JUNK_MIN_BYTES, end // JUNK_FRACTION)
        position, frames, announced, junk = 0, 0, None, 0
        while position + 4 <= end:
            if data[position : position + 3] == b"ID3":
                position += _id3v2_size(data, position)
                continue
            length = frame_length(data[position : position + 4])
            if length is None:
                if data[position : position + 3] in TRAILING_TAGS or data[position:end].strip(b"\0") == b"":
                    break
                found = _resync(data, position, budget - junk)
                if found is None:
                    raise InputError(f"{name}: corrupt MP3 (invalid data at byte {position})")
                junk += found - position
                position = found
                continue
            if position + length > end:
                raise InputError(f"{name}: truncated MP3 (the last frame is cut at byte {end})")
            if frames == 0:
                announced = _xing_frames(data[position : position + length])
            position += length
            frames += 1
    if announced is not None and frames - 1 < announced:
        raise InputError(f"{name}: truncated MP3 ({frames - 1} of {announced} frames)")
