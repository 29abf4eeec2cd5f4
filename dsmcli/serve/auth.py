"""API-key check for every route but ``/health`` (pure ASGI, so it also answers WebSocket upgrades).

Accepted, as Kyutai's server and OpenAI's clients send it: ``Authorization: Bearer KEY``, the
``kyutai-api-key: KEY`` header, or the ``?auth_id=KEY`` query. A refused HTTP request gets 401 with an
OpenAI-style JSON error; a refused WebSocket upgrade gets HTTP 401 before the upgrade (where the ASGI server
supports denial responses, else a close with code 1008).
"""

from __future__ import annotations

import hmac
import json
from urllib.parse import parse_qs

OPEN_PATHS = ("/health",)
KYUTAI_HEADER = b"kyutai-api-key"
BEARER = "bearer "


def presented_keys(scope: dict) -> list[str]:
    keys = []
    for name, value in scope.get("headers", []):
        text = value.decode("latin-1")
        if name == b"authorization" and text.lower().startswith(BEARER):
            keys.append(text[len(BEARER):].strip())
        elif name == KYUTAI_HEADER:
            keys.append(text.strip())
    keys += parse_qs(scope.get("query_string", b"").decode("latin-1")).get("auth_id", [])
    return keys


def authorized(scope: dict, api_key: str) -> bool:
    expected = api_key.encode()
    return any(hmac.compare_digest(key.encode(), expected) for key in presented_keys(scope))


class AuthMiddleware:
    def __init__(self, app, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send) -> None:
        if (self.api_key is None or scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS
                or authorized(scope, self.api_key)):
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["dsm_note"] = "refused: bad or missing API key"
        body = json.dumps({"error": {"message": "invalid or missing API key", "type": "invalid_request_error",
                                     "param": None, "code": "invalid_api_key"}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008})
