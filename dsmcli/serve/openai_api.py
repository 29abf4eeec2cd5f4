"""OpenAI-compatible audio routes: ``POST /v1/audio/transcriptions``, ``POST /v1/audio/speech``,
``GET /v1/models`` (docs: PROTOCOLS.md §4). Uploads are decoded by the same code as ``dsm transcribe``'s
inputs and streamed into a live session; speech streams out as it is generated (wav, pcm)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from dsmcli.engine.scheduler import SchedulerClosed, SchedulerFull, StreamEnd
from dsmcli.errors import DsmError, InputError
from dsmcli.results import Word
from dsmcli.serve import openai_codec as codec
from dsmcli.serve.bridge import EventPipe
from dsmcli.serve.state import ServeState
from dsmcli.stt.session import SttSession
from dsmcli.tts.session import AudioChunk

RETRY_AFTER_SECONDS = "1"
MAX_BACKLOG_SECONDS = 30.0  # audio of an upload decoded ahead of the model
BACKLOG_WAIT_SECONDS = 0.02
FORM_FIELD_BYTES = 64 * 1024
MAX_SUFFIX = 12


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
    return JSONResponse(codec.error_body(message, kind, param), status_code=status, headers=headers)


def _note(request: Request, text: str) -> None:
    request.scope.setdefault("state", {})["dsm_note"] = text


def check_length(request: Request, limit: int) -> None:
    length = request.headers.get("content-length", "")
    if not length.isdigit():
        raise ApiError(411, "a Content-Length header is required")
    if int(length) > limit:
        raise ApiError(413, f"the request body is larger than {limit} bytes")


def open_stream(open_session, *args, **kwargs):
    try:
        return open_session(*args, **kwargs)
    except (SchedulerFull, SchedulerClosed) as exc:
        raise ApiError(503, f"{exc}: every stream slot is busy, retry later") from None


# ------------------------------------------------------------------------------------------ transcriptions
def _save_upload(upload: UploadFile) -> Path:
    suffix = Path(upload.filename or "").suffix[:MAX_SUFFIX]
    if not suffix.replace(".", "").isalnum():
        suffix = ""
    fd, name = tempfile.mkstemp(prefix="dsm-serve-", suffix=suffix)
    with os.fdopen(fd, "wb") as out:
        upload.file.seek(0)
        while data := upload.file.read(1 << 20):
            out.write(data)
    return Path(name)


def _feed_file(path: Path, session: SttSession) -> None:
    """Decode ``path`` as ``dsm transcribe`` does and push it into the session (a worker thread)."""
    from dsmcli.audio import open_audio

    try:
        with open_audio(str(path)) as source:
            for chunk in source:
                while session.backlog_seconds > MAX_BACKLOG_SECONDS and not session.ended:
                    time.sleep(BACKLOG_WAIT_SECONDS)  # decode only a little ahead of the model: bounded memory
                if session.ended:
                    return
                session.push(chunk)
        session.end()
    except BaseException:
        session.close()
        raise


async def _transcribe(state: ServeState, path: Path, name: str) -> AsyncIterator[object]:
    """The session events of an uploaded file; InputError when it cannot be decoded."""
    assert state.stt is not None
    pipe = EventPipe()
    session = open_stream(state.stt.open, pipe.deliver)
    decoding = asyncio.ensure_future(asyncio.to_thread(_feed_file, path, session))
    decoding.add_done_callback(lambda task: task.cancelled() or task.exception())  # always retrieved
    try:
        async for event in pipe.until_end():
            if isinstance(event, StreamEnd) and event.error is not None:
                await asyncio.wait({decoding})
                error = decoding.exception()
                if isinstance(error, DsmError):
                    raise InputError(f"{name}: {error}".replace(f"{path}: ", "").replace(str(path), name))
                raise DsmError(event.error)
            yield event
    finally:
        session.close()


async def _form(request: Request, limit: int) -> tuple[UploadFile, dict[str, str], list[str]]:
    check_length(request, limit)
    try:
        form = await request.form(max_files=1, max_fields=32, max_part_size=FORM_FIELD_BYTES)
    except Exception as exc:  # MultiPartException, a client that left mid-upload
        raise ApiError(400, f"not a valid multipart/form-data body: {exc}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "the 'file' field (an audio file) is required", "file")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    granularities = [g for key in ("timestamp_granularities[]", "timestamp_granularities")
                     for g in form.getlist(key) if isinstance(g, str)]
    return upload, fields, granularities


async def transcriptions(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    try:
        if state.stt is None:
            raise ApiError(404, "this server has no speech-to-text model")
        upload, fields, granularities = await _form(request, state.options.max_upload_bytes)
        fmt = fields.get("response_format", "json")
        if fmt not in codec.TRANSCRIPTION_FORMATS:
            raise ApiError(400, f"response_format must be one of {', '.join(codec.TRANSCRIPTION_FORMATS)}",
                           "response_format")
        path = await asyncio.to_thread(_save_upload, upload)
    except ApiError as exc:
        _note(request, str(exc))
        return error_response(exc.status, str(exc), exc.param)
    name = Path(upload.filename or "upload").name
    if fields.get("stream", "false").lower() == "true":
        return StreamingResponse(_sse_events(request, state, path, name), media_type="text/event-stream")
    try:
        words, duration = await collect_words(state, path, name)
    except ApiError as exc:
        return error_response(exc.status, str(exc))
    except DsmError as exc:
        _note(request, str(exc))
        return error_response(400, str(exc), "file")
    finally:
        path.unlink(missing_ok=True)
    _note(request, f"transcription {name}: {duration:.1f}s audio, {len(words)} words")
    body = codec.transcription(fmt, words, duration, granularities, state.stt.model.name)
    return Response(body, media_type=codec.MEDIA_TYPES[fmt])


async def collect_words(state: ServeState, path: Path, name: str) -> tuple[list[Word], float]:
    words: list[Word] = []
    duration = 0.0
    async for event in _transcribe(state, path, name):
        if isinstance(event, Word):
            words.append(event)
        elif isinstance(event, StreamEnd):
            duration = float(event.result or 0.0)
    return words, duration


async def _sse_events(request: Request, state: ServeState, path: Path, name: str) -> AsyncIterator[str]:
    words: list[Word] = []
    try:
        async for event in _transcribe(state, path, name):
            if isinstance(event, Word):
                delta = event.text.lstrip() if not words else event.text
                words.append(event)
                yield codec.sse({"type": "transcript.text.delta", "delta": delta})
        yield codec.sse({"type": "transcript.text.done", "text": codec.transcript_text(words)})
        _note(request, f"transcription {name} (stream): {len(words)} words")
    except (ApiError, DsmError) as exc:
        _note(request, str(exc))
        yield codec.sse(codec.error_body(str(exc)))
    finally:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ speech
async def json_body(request: Request, limit: int) -> dict:
    check_length(request, limit)
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def speech_request(body: dict, max_chars: int) -> tuple[str, str | None, str]:
    text, voice, fmt = body.get("input"), body.get("voice"), body.get("response_format")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "'input' must be a non-empty string", "input")
    if len(text) > max_chars:
        raise ApiError(400, f"'input' is limited to {max_chars} characters", "input")
    if isinstance(voice, dict):
        voice = voice.get("id")
    if voice is not None and not isinstance(voice, str):
        raise ApiError(400, "'voice' must be a voice name", "voice")
    formats = codec.speech_formats()
    fmt = fmt if fmt is not None else ("mp3" if "mp3" in formats else "wav")
    if fmt not in formats:
        raise ApiError(400, f"response_format must be one of {', '.join(formats)}", "response_format")
    stream_format = body.get("stream_format", "audio")
    if stream_format not in ("audio", "sse") or (stream_format == "sse" and fmt not in codec.STREAMED_AUDIO):
        raise ApiError(400, "stream_format must be 'audio', or 'sse' with response_format pcm or wav",
                       "stream_format")
    return text, voice or None, fmt


async def speech(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    pipe = EventPipe()
    try:
        if state.tts is None:
            raise ApiError(404, "this server has no text-to-speech model")
        body = await json_body(request, 4 * state.options.max_text_chars + 4096)
        text, voice, fmt = speech_request(body, state.options.max_text_chars)
        try:
            await asyncio.to_thread(state.tts.voice, voice)
        except DsmError as exc:
            raise ApiError(400, str(exc), "voice") from None
        session = open_stream(state.tts.open, voice, pipe.deliver)
    except ApiError as exc:
        _note(request, str(exc))
        return error_response(exc.status, str(exc), exc.param)
    session.push(text)
    session.end()
    if body.get("stream_format") == "sse":
        return StreamingResponse(_audio_events(request, session, pipe), media_type="text/event-stream")
    media = codec.speech_formats()[fmt]
    return StreamingResponse(audio_body(request, session, pipe, fmt), media_type=media)


async def _audio_events(request: Request, session, pipe: EventPipe) -> AsyncIterator[str]:
    """``speech.audio.delta`` events (base64 16-bit PCM, one per 80 ms frame), then ``speech.audio.done``."""
    frames = 0
    try:
        async for event in pipe.until_end():
            if isinstance(event, AudioChunk):
                frames += 1
                audio = base64.b64encode(codec.audio_frame(event.pcm)).decode("ascii")
                yield codec.sse({"type": "speech.audio.delta", "audio": audio})
            elif isinstance(event, StreamEnd) and event.error is not None:
                yield codec.sse(codec.error_body(event.error, "server_error"))
                return
        usage = {"input_tokens": 0, "output_tokens": frames, "total_tokens": frames}  # output: 80 ms frames
        yield codec.sse({"type": "speech.audio.done", "usage": usage})
        _note(request, f"speech sse: {frames * 0.08:.2f}s audio")
    finally:
        session.close()


async def audio_body(request: Request, session, pipe: EventPipe, fmt: str) -> AsyncIterator[bytes]:
    frames: list[np.ndarray] = []
    try:
        yield codec.audio_start(fmt)
        async for event in pipe.until_end():
            if isinstance(event, AudioChunk):
                if fmt in codec.STREAMED_AUDIO:
                    yield codec.audio_frame(event.pcm)
                frames.append(event.pcm)
            elif isinstance(event, StreamEnd) and event.error is not None:
                _note(request, f"speech failed: {event.error}")
                return
        if fmt not in codec.STREAMED_AUDIO:
            pcm = np.concatenate(frames) if frames else np.zeros(0, dtype=np.float32)
            yield await asyncio.to_thread(codec.encode_audio, fmt, pcm)
        _note(request, f"speech {fmt}: {len(frames) * 0.08:.2f}s audio")
    finally:
        session.close()


# ------------------------------------------------------------------------------------------------ models
def _model(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "kyutai"}


async def models(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    created = int(state.started)
    return JSONResponse({"object": "list", "data": [_model(name, created) for name in state.model_names()]})


async def model(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    name = request.path_params["name"]
    if name not in state.model_names():
        return error_response(404, f"model {name!r} is not served here", "model")
    return JSONResponse(_model(name, int(state.started)))
