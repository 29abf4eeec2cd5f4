"""The ASGI app: routes of both protocols, ``/health``, JSON errors, API-key check, one log line a request."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from dsmcli.serve import kyutai, kyutai_http, openai_api
from dsmcli.serve.auth import AuthMiddleware
from dsmcli.serve.logs import LogMiddleware
from dsmcli.serve.state import ServeState


async def health(request: Request) -> Response:
    return JSONResponse(request.app.state.serve.health())


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return openai_api.error_response(status, f"{request.method} {request.url.path}: {message}")


def build_app(state: ServeState):
    routes = [
        WebSocketRoute("/api/asr-streaming", kyutai.asr_streaming),
        WebSocketRoute("/api/tts_streaming", kyutai.tts_streaming),
        Route("/api/asr-streaming", kyutai_http.asr_post, methods=["POST"]),
        Route("/api/tts_streaming", kyutai_http.tts_post, methods=["POST"]),
        Route("/v1/audio/transcriptions", openai_api.transcriptions, methods=["POST"]),
        Route("/v1/audio/speech", openai_api.speech, methods=["POST"]),
        Route("/v1/models", openai_api.models, methods=["GET"]),
        Route("/v1/models/{name:path}", openai_api.model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _http_error})
    app.state.serve = state
    return LogMiddleware(AuthMiddleware(app, state.options.api_key))
