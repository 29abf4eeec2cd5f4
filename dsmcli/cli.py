"""The `dsm` command line: parse flags, call one library function, map expected failures to exit codes.

No model logic lives here. Exit codes (README.md): 0 ok, 1 runtime error, 2 usage, 3 model load,
4 input decode, 5 some files of a batch failed, 130 interrupted.
"""

from __future__ import annotations

import signal
import sys
from typing import Optional

import typer

from dsmcli import __version__
from dsmcli.errors import EXIT_INTERRUPTED, DsmError

app = typer.Typer(
    name="dsm",
    help="Streaming speech-to-text and text-to-speech with Kyutai's Delayed Streams Modeling models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int) -> None:
    """One line on stderr, then exit with ``code``."""
    print(f"dsm: error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        print(f"dsm {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Streaming speech-to-text and text-to-speech with Kyutai's Delayed Streams Modeling models."""


@app.command("models")
def models_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print the registry as JSON."),
) -> None:
    """List the model registry (weights.toml) and what is in the local cache."""
    from dsmcli.commands.models import list_models

    list_models(json_out=json_out)


@app.command("download")
def download_cmd(
    model: str = typer.Argument(..., help="Registry name, Hub repo id, or local directory."),
) -> None:
    """Fetch a model's files into the Hugging Face cache ahead of time."""
    from dsmcli.commands.models import download_model

    download_model(model)


def _register_optional_commands() -> None:
    """Task commands live in their own modules; each registers itself on `app`."""
    import importlib

    for module in ("dsmcli.commands.transcribe", "dsmcli.commands.speak", "dsmcli.commands.bench",
                   "dsmcli.commands.serve"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def main(argv: list[str] | None = None) -> None:
    if hasattr(signal, "SIGPIPE"):  # `dsm ... | head` ends quietly, like other Unix tools
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    _register_optional_commands()
    try:
        # Without standalone mode Typer *returns* the exit code of typer.Exit (and of Ctrl-C) instead of raising.
        code = app(args=argv, standalone_mode=False)
    except DsmError as exc:
        print(f"dsm: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("dsm: interrupted", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # Click's own exceptions (Typer vendors click, so match them by shape, not by import).
        if type(exc).__name__ == "Abort":
            print("dsm: interrupted", file=sys.stderr, flush=True)
            sys.exit(EXIT_INTERRUPTED)
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
