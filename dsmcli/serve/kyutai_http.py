"""moshi-server's one-shot HTTP forms of the streaming routes (docs: PROTOCOLS.md §3).

``POST /api/asr-streaming``: the body is an audio file (any format ``dsm transcribe`` reads); the answer is
the JSON array of ``Word`` / ``EndWord`` messages. ``POST /api/tts_streaming``: JSON ``{"text", "voice"}``;
the answer is a WAV (16-bit, 24 kHz, streaming sizes) streamed as it is generated.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from dsmcli.errors import DsmError
from dsmcli.serve import openai_api
from dsmcli.serve.bridge import EventPipe
from dsmcli.serve.kyutai_codec import asr_event
from dsmcli.serve.openai_api import ApiError, error_response
from dsmcli.serve.state import ServeState


async def _body_to_file(request: Request, limit: int) -> Path:
    openai_api.check_length(request, limit)
    data = await request.body()
    fd, name = tempfile.mkstemp(prefix="dsm-serve-")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return Path(name)


async def asr_post(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    path = None
    try:
        if state.stt is None:
            raise ApiError(404, "this server has no speech-to-text model")
        path = await _body_to_file(request, state.options.max_upload_bytes)
        words, duration = await openai_api.collect_words(state, path, "upload")
    except ApiError as exc:
        return error_response(exc.status, str(exc))
    except DsmError as exc:
        return error_response(400, str(exc))
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
    request.scope.setdefault("state", {})["dsm_note"] = f"asr post: {duration:.1f}s audio, {len(words)} words"
    return JSONResponse([message for word in words for message in asr_event(word)])


async def tts_post(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    pipe = EventPipe()
    try:
        if state.tts is None:
            raise ApiError(404, "this server has no text-to-speech model")
        body = await openai_api.json_body(request, 4 * state.options.max_text_chars + 4096)
        text, voice, _ = openai_api.speech_request(
            {"input": body.get("text"), "voice": body.get("voice"), "response_format": "wav"},
            state.options.max_text_chars)
        try:
            await asyncio.to_thread(state.tts.voice, voice)
        except DsmError as exc:
            raise ApiError(400, str(exc), "voice") from None
        session = openai_api.open_stream(state.tts.open, voice, pipe.deliver)
    except ApiError as exc:
        return error_response(exc.status, str(exc), exc.param)
    session.push(text)
    session.end()
    return StreamingResponse(openai_api.audio_body(request, session, pipe, "wav"), media_type="audio/wav")
