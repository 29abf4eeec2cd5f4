"""Serve until SIGINT/SIGTERM: stop accepting, give open streams ``shutdown_seconds`` to finish (then close
them), stop the step threads, return (exit code 0)."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading

from dsmcli.errors import DsmError
from dsmcli.serve.app import build_app
from dsmcli.serve.logs import log
from dsmcli.serve.state import ServeState

HANDLED = (signal.SIGINT, signal.SIGTERM)


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server without re-raising the signal after a graceful exit (that would turn a clean
        SIGTERM stop into a killed process, a Ctrl-C into exit code 130)."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts (DsmError: one line, exit code 1)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DsmError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(state: ServeState, sock: socket.socket | None = None) -> None:
    """Serve on ``sock`` (bound by :func:`bind`; bound here when None) until SIGINT/SIGTERM."""
    import uvicorn

    options = state.options
    config = uvicorn.Config(
        build_app(state), host=options.host, port=options.port, log_level="warning", access_log=False,
        limit_concurrency=options.max_connections, ws_max_size=options.max_message_bytes,
        timeout_graceful_shutdown=max(int(round(options.shutdown_seconds)), 1), lifespan="off",
        ws_ping_interval=10.0, ws_ping_timeout=options.idle_seconds,
    )
    server = _server_class()(config)
    sock = bind(options.host, options.port) if sock is None else sock
    state.start()
    models = ", ".join(state.model_names())
    port = sock.getsockname()[1]
    log(f"listening on http://{options.host}:{port} ({models}; {options.max_streams} streams per model"
        f"{'; API key required' if options.api_key else ''})")
    try:
        server.run(sockets=[sock])
    finally:
        state.stop(timeout=options.shutdown_seconds)
        log("stopped")

