"""Kyutai's streaming WebSocket routes, so moshi-server clients work unchanged (docs: PROTOCOLS.md §1-2).

``/api/asr-streaming``: ``Audio {pcm}`` (float32, 24 kHz) and ``Marker {id}`` in; ``Ready``, ``Word``,
``EndWord``, ``Step`` (models with VAD heads), ``Marker`` and ``Error`` out. The server adds the model's silence
prefix itself, so times count from the client's first sample, as ``dsm transcribe`` counts them. Extension:
``Eos`` ends the audio (silence suffix, last words, then the server closes), like a file's end.

``/api/tts_streaming?voice=NAME&format=PcmMessagePack``: ``Text {text}`` (a word or more) and ``Eos`` in;
``Ready``, ``Text {text, start_s, stop_s}``, ``Audio {pcm}`` and ``Error`` out, then the server closes.
``format=Pcm`` streams raw float32 little-endian bytes instead.
"""

from __future__ import annotations

import asyncio

from starlette.websockets import WebSocket

from dsmcli.errors import DsmError
from dsmcli.serve.bridge import EventPipe
from dsmcli.serve.kyutai_codec import READY, BadMessage, asr_event, pack, parse_asr, parse_tts, tts_event
from dsmcli.serve.state import ServeState
from dsmcli.serve.streams import receive_data, refuse, run_session, send_bytes
from dsmcli.tts.session import AudioChunk

TTS_FORMATS = ("PcmMessagePack", "Pcm")


def _note(ws: WebSocket, text: str) -> None:
    ws.scope.setdefault("state", {})["dsm_note"] = text


async def asr_streaming(ws: WebSocket) -> None:
    state: ServeState = ws.app.state.serve
    await ws.accept()
    if state.stt is None:
        return await refuse(ws, "this server has no speech-to-text model")
    pipe = EventPipe()
    try:
        session = state.stt.open(pipe.deliver, steps=state.stt.has_vad)
    except DsmError as exc:
        return await refuse(ws, str(exc))
    limits, counts = state.options, {"samples": 0, "words": 0}

    async def feed() -> None:
        while True:
            data = await receive_data(ws, limits.idle_seconds)
            if isinstance(data, str):
                continue  # client text frames are ignored, as moshi-server does
            message = parse_asr(data, limits.max_message_bytes)
            if message.type == "Audio":
                counts["samples"] += len(message.pcm)  # type: ignore[arg-type]
                session.push(message.pcm)  # type: ignore[arg-type]
            elif message.type == "Marker":
                session.mark(message.id)  # type: ignore[arg-type]
            elif message.type == "Eos":
                session.end()
                return

    async def relay() -> None:
        await send_bytes(ws, pack(READY))
        async for event in pipe.until_end():
            for message in asr_event(event):
                counts["words"] += message["type"] == "Word"
                await send_bytes(ws, pack(message))

    outcome = await run_session(ws, session, feed, relay)
    _note(ws, f"asr {outcome}: {counts['samples'] / 24000:.1f}s audio, {counts['words']} words")


async def tts_streaming(ws: WebSocket) -> None:
    state: ServeState = ws.app.state.serve
    fmt = ws.query_params.get("format", "PcmMessagePack")
    await ws.accept()
    if state.tts is None:
        return await refuse(ws, "this server has no text-to-speech model")
    if fmt not in TTS_FORMATS:
        return await refuse(ws, f"format {fmt!r} is not supported (choose {', '.join(TTS_FORMATS)})")
    pipe = EventPipe()
    try:
        voice = ws.query_params.get("voice") or None
        await asyncio.to_thread(state.tts.voice, voice)  # resolve (maybe fetch) off the event loop
        session = state.tts.open(voice, pipe.deliver)
    except DsmError as exc:
        return await refuse(ws, str(exc))
    msgpack_out = fmt == "PcmMessagePack"
    limits, counts = state.options, {"chars": 0, "frames": 0}

    async def feed() -> None:
        while True:
            data = await receive_data(ws, limits.idle_seconds)
            message = parse_tts(data, limits.max_message_bytes) if isinstance(data, bytes) else None
            if message is not None and message.type == "Eos":
                session.end()
                return
            text = data if message is None else message.text
            counts["chars"] += len(text)  # type: ignore[arg-type]
            if counts["chars"] > limits.max_text_chars:
                raise BadMessage(f"the text of a stream is limited to {limits.max_text_chars} characters")
            session.push(f"{text} ")  # one message = whole words, as moshi-server splits each message

    async def relay() -> None:
        if msgpack_out:
            await send_bytes(ws, pack(READY))
        async for event in pipe.until_end():
            counts["frames"] += isinstance(event, AudioChunk)
            if msgpack_out:
                for message in tts_event(event):
                    await send_bytes(ws, pack(message))
            elif isinstance(event, AudioChunk):
                await send_bytes(ws, event.pcm.astype("<f4").tobytes())

    outcome = await run_session(ws, session, feed, relay)
    _note(ws, f"tts {outcome}: {counts['chars']} chars, {counts['frames'] * 0.08:.2f}s audio")
