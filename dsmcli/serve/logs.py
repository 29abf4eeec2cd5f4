"""One line on stderr per request or stream: client, method, path, status, duration, and a note the route left
in ``scope["state"]["dsm_note"]`` (e.g. words sent, audio seconds, the error)."""

from __future__ import annotations

import sys
import time

PREFIX = "dsm serve:"


def log(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


class LogMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), {"code": "-"}
        state = scope.setdefault("state", {})

        async def watch(message) -> None:
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status["code"] = str(message["status"])
            elif kind == "websocket.accept":
                status["code"] = "101"
            elif kind == "websocket.close" and status["code"] == "-":
                status["code"] = f"close {message.get('code', 1000)}"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            client = scope.get("client") or ("-", 0)
            method = scope.get("method", "WS")
            note = state.get("dsm_note")
            log(f"{client[0]}:{client[1]} {method} {scope['path']} {status['code']} "
                f"{time.monotonic() - started:.2f}s" + (f" {note}" if note else ""))
