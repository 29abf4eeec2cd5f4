"""Options of ``dsm serve``, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from dsmcli.errors import UsageError

DEFAULT_PORT = 8080
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeOptions:
    """Where to listen, who may connect, and the bounds that keep one client from hurting the others.

    ``max_streams``: batch slots per model; ``max_waiting``: streams that may wait for a slot when all are busy
    (0: refuse at once with 503 / an ``Error`` message); ``max_connections``: open HTTP + WebSocket connections
    (beyond: 503); ``max_upload_bytes``: a transcription upload; ``max_text_chars``: a speech request's input
    and the text of one stream; ``max_message_bytes``: one WebSocket message; ``idle_seconds``: a WebSocket
    client silent that long is dropped; ``shutdown_seconds``: how long SIGINT/SIGTERM waits for open streams.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    max_streams: int = 8
    max_waiting: int = 0
    max_connections: int = 64
    max_upload_bytes: int = 25 * MIB
    max_text_chars: int = 4096
    max_message_bytes: int = 4 * MIB
    idle_seconds: float = 30.0
    shutdown_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be within 0..65535, got {self.port}")
        if self.max_streams < 1 or self.max_waiting < 0 or self.max_connections < 1:
            raise UsageError("--max-streams and --max-connections must be >= 1, --max-waiting >= 0")
        if min(self.max_upload_bytes, self.max_text_chars, self.max_message_bytes) < 1:
            raise UsageError("size limits must be positive")
        if not (self.idle_seconds > 0 and self.shutdown_seconds >= 0):
            raise UsageError("--idle-timeout must be > 0 and --shutdown-timeout >= 0")
        if self.api_key is not None and not self.api_key.strip():
            raise UsageError("--api-key must not be empty")
