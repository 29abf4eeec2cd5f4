"""Run one WebSocket client against one live session: read its messages, relay the session's events, and end
both cleanly whatever happens first (the stream ends, the client leaves or goes silent, a bad message)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.websockets import WebSocket, WebSocketState

from dsmcli.engine.scheduler import SlotStream
from dsmcli.errors import DsmError
from dsmcli.serve.kyutai_codec import BadMessage, error, pack

CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_UNSUPPORTED, CLOSE_POLICY, CLOSE_TRY_AGAIN = 1000, 1001, 1003, 1008, 1013


class ClientGone(Exception):
    """The client disconnected or stayed silent past the idle timeout."""


async def receive_data(ws: WebSocket, idle_seconds: float) -> bytes | str:
    """The next binary (bytes) or text (str) message. ClientGone on disconnect or silence."""
    try:
        message = await asyncio.wait_for(ws.receive(), idle_seconds)
    except (asyncio.TimeoutError, RuntimeError):
        raise ClientGone() from None
    if message["type"] == "websocket.disconnect":
        raise ClientGone()
    if message.get("bytes") is not None:
        return message["bytes"]
    return message.get("text") or ""


async def send_bytes(ws: WebSocket, data: bytes) -> None:
    """Send, or ClientGone when the client has left."""
    try:
        await ws.send_bytes(data)
    except Exception:  # WebSocketDisconnect, a closed transport, a send after close
        raise ClientGone() from None


async def close(ws: WebSocket, code: int = CLOSE_NORMAL) -> None:
    if ws.application_state == WebSocketState.CONNECTED and ws.client_state == WebSocketState.CONNECTED:
        try:
            await ws.close(code)
        except Exception:  # the client vanished meanwhile
            pass


async def refuse(ws: WebSocket, message: str, code: int = CLOSE_TRY_AGAIN) -> None:
    """An accepted socket that cannot be served: Kyutai's ``Error`` message, then a close."""
    ws.scope.setdefault("state", {})["dsm_note"] = f"refused: {message}"
    try:
        await ws.send_bytes(pack(error(message)))
    except Exception:
        pass
    await close(ws, code)


async def run_session(ws: WebSocket, session: SlotStream, feed: Callable[[], Awaitable[None]],
                      relay: Callable[[], Awaitable[None]]) -> str:
    """Run ``feed`` (client -> session; returns after the end of input) and ``relay`` (session -> client;
    returns after the session's end) together. Returns how it ended, for the log line."""
    relay_task = asyncio.ensure_future(relay())
    feed_task = asyncio.ensure_future(feed())
    outcome = "done"
    try:
        done, _ = await asyncio.wait({relay_task, feed_task}, return_when=asyncio.FIRST_COMPLETED)
        if feed_task in done and feed_task.exception() is None:
            await relay_task  # input complete: the stream finishes, then we close
        elif feed_task in done:
            outcome = await _feed_failed(ws, feed_task.exception())
        else:
            relay_task.result()
        await close(ws, CLOSE_NORMAL)
    except ClientGone:
        outcome = "client gone"
    finally:
        session.close()  # frees the slot at once if the stream had not ended
        for task in (relay_task, feed_task):
            task.cancel()
        # collect both outcomes (a task whose exception is never retrieved is logged with a traceback)
        await asyncio.gather(relay_task, feed_task, return_exceptions=True)
    return outcome


async def _feed_failed(ws: WebSocket, exc: BaseException | None) -> str:
    if isinstance(exc, ClientGone):
        return "client gone"
    if isinstance(exc, (BadMessage, DsmError)):
        await refuse(ws, str(exc), CLOSE_UNSUPPORTED)
        return f"bad message: {exc}"
    raise exc  # type: ignore[misc]
