"""Kyutai's streaming messages (moshi-server ``asr.rs`` / ``py_module.rs``): one MessagePack map per binary
WebSocket message, ``type`` naming the variant. See docs/PROTOCOLS.md §1-2 (shared docs)."""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import numpy as np

from dsmcli.engine.scheduler import StreamEnd
from dsmcli.results import Word
from dsmcli.stt.session import Marker, VadStep
from dsmcli.tts.session import AudioChunk

EOS_BYTE = b"\x00"  # a binary message of this one byte also ends a TTS text stream
MAX_MARKER_ID = 2**63 - 1


class BadMessage(ValueError):
    """A client message that is not valid for this route (reported to that client)."""


@dataclass(frozen=True)
class ClientMessage:
    type: str
    pcm: np.ndarray | None = None
    text: str | None = None
    id: int | None = None


F32_ARRAYS = ("pcm", "prs")  # Vec<f32> in moshi-server: float32 on the wire; every other float is a float64
F32_MARKER = 0xCA


def _f32_array(packer: msgpack.Packer, values: object) -> bytes:
    """A MessagePack array of float32 (big-endian, one 0xca marker each), built with numpy."""
    data = np.asarray(values, dtype=">f4").reshape(-1)
    cells = np.empty((len(data), 5), dtype=np.uint8)
    cells[:, 0] = F32_MARKER
    cells[:, 1:] = data.view(np.uint8).reshape(-1, 4)
    return packer.pack_array_header(len(data)) + cells.tobytes()


def pack(message: dict) -> bytes:
    """One server message: ``pcm`` / ``prs`` as float32 arrays, times as float64 (as rmp_serde writes them)."""
    packer = msgpack.Packer()
    parts = [packer.pack_map_header(len(message))]
    for key, value in message.items():
        parts.append(packer.pack(key))
        parts.append(_f32_array(packer, value) if key in F32_ARRAYS else packer.pack(value))
    return b"".join(parts)


def _unpack(data: bytes, max_len: int) -> dict:
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=True, max_str_len=max_len, max_bin_len=max_len,
                                  max_array_len=max_len, max_map_len=64)
    except Exception as exc:  # msgpack raises several unrelated types for malformed input
        raise BadMessage(f"not a MessagePack message ({type(exc).__name__})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise BadMessage("a message must be a MessagePack map with a string 'type'")
    return message


def _pcm(message: dict) -> np.ndarray:
    pcm = message.get("pcm")
    if not isinstance(pcm, list):
        raise BadMessage("Audio.pcm must be an array of numbers")
    try:
        samples = np.asarray(pcm, dtype=np.float32)  # in C: a string or a nested array fails here
    except (TypeError, ValueError):
        raise BadMessage("Audio.pcm must be an array of numbers") from None
    if samples.ndim != 1 or not np.isfinite(samples).all():
        raise BadMessage("Audio.pcm must be a flat array of finite numbers")
    return samples


def parse_asr(data: bytes, max_len: int) -> ClientMessage:
    """``Audio {pcm}`` / ``Marker {id}`` (``Eos`` is our extension: end of audio, last words, then close)."""
    message = _unpack(data, max_len)
    kind = message["type"]
    if kind == "Audio":
        return ClientMessage(kind, pcm=_pcm(message))
    if kind == "Marker":
        marker = message.get("id")
        if not isinstance(marker, int) or isinstance(marker, bool) or abs(marker) > MAX_MARKER_ID:
            raise BadMessage("Marker.id must be an integer")
        return ClientMessage(kind, id=marker)
    if kind in ("Eos", "Init"):
        return ClientMessage(kind)
    raise BadMessage(f"unknown message type {kind!r} (Audio, Marker, Eos)")


def parse_tts(data: bytes, max_len: int) -> ClientMessage:
    """``Text {text}`` / ``Eos`` (or the single byte 0x00)."""
    if data == EOS_BYTE:
        return ClientMessage("Eos")
    message = _unpack(data, max_len)
    kind = message["type"]
    if kind == "Text":
        if not isinstance(message.get("text"), str):
            raise BadMessage("Text.text must be a string")
        return ClientMessage(kind, text=message["text"])
    if kind == "Eos":
        return ClientMessage(kind)
    if kind == "Voice":
        raise BadMessage("Voice messages are not supported: choose a voice with ?voice=NAME")
    raise BadMessage(f"unknown message type {kind!r} (Text, Eos)")


def asr_event(event: object) -> list[dict]:
    """An STT session event as Kyutai messages. A word is final when we send it, so its ``EndWord`` follows
    at once (the Rust server sends it at the next word boundary; clients pair them the same way)."""
    if isinstance(event, Word):
        return [{"type": "Word", "text": event.text.strip(), "start_time": event.start},
                {"type": "EndWord", "stop_time": event.end}]
    if isinstance(event, VadStep):
        return [{"type": "Step", "step_idx": event.step_idx, "prs": list(event.prs), "buffered_pcm": event.buffered_pcm}]
    if isinstance(event, Marker):
        return [{"type": "Marker", "id": event.id}]
    if isinstance(event, StreamEnd) and event.error is not None:
        return [error(event.error)]
    return []  # EndOfTurn (the Step probabilities carry it), a clean end


def tts_event(event: object) -> list[dict]:
    if isinstance(event, AudioChunk):
        return [{"type": "Audio", "pcm": event.pcm}]
    if isinstance(event, Word):
        return [{"type": "Text", "text": event.text.strip(), "start_s": event.start, "stop_s": event.end}]
    if isinstance(event, StreamEnd) and event.error is not None:
        return [error(event.error)]
    return []


def error(message: str) -> dict:
    return {"type": "Error", "message": message}


READY = {"type": "Ready"}
