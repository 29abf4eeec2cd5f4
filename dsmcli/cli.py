"""The `dsm` command line: the Typer app, every command registered explicitly, and expected failures mapped to
exit codes.

No model logic lives here; each command is a function of :mod:`dsmcli.commands` (which never imports this module).
The command modules import no torch at module level, so `dsm --help` stays fast; a command imports what it needs
when it runs. Exit codes (README.md): 0 ok, 1 runtime error, 2 usage, 3 model load, 4 input decode, 5 some files of
a batch failed, 130 interrupted.
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn, Optional

from dsmcli.cpu_threads import apply_wait_policy

apply_wait_policy()  # before anything imports torch: OpenMP reads it once (see dsmcli/cpu_threads.py)

import typer  # noqa: E402

from dsmcli import __version__  # noqa: E402
from dsmcli.commands import bench, kernels, models, serve, speak, transcribe  # noqa: E402
from dsmcli.commands.common import error_message  # noqa: E402
from dsmcli.errors import EXIT_INTERRUPTED, DsmError  # noqa: E402


def _plain_help_types() -> None:
    """Typer 0.2x prints a type after every option (``<bool>`` on each flag, ``<str>``, ``<list[str]>``): noise in
    ``--help``. Flags and arguments (named by their metavar) show nothing; values show their metavar (FILE, N) or
    click's type name (TEXT, INTEGER). A Typer without ``display_type_rich`` (older) is left as it is."""
    from typer import core

    plain = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": ""}
    for cls in (getattr(core, "TyperArgument", None), getattr(core, "TyperOption", None)):
        original = getattr(cls, "display_type_rich", None)
        if cls is None or original is None:
            continue

        def display_type_rich(self, ctx, _original=original):  # type: ignore[no-untyped-def]
            if getattr(self, "is_flag", False) or isinstance(self, core.TyperArgument):
                return None
            if self.metavar is not None:
                return self.metavar
            label = str(_original(self, ctx) or "").strip("<>.").replace(" range", "")
            label = label.removeprefix("list[").removesuffix("]")
            return plain.get(label, label.upper()) or None

        cls.display_type_rich = display_type_rich


_plain_help_types()

app = typer.Typer(
    name="dsm",
    help="Streaming speech-to-text and text-to-speech with Kyutai's Delayed Streams Modeling models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


app.command("transcribe", epilog=transcribe.TRANSCRIBE_EPILOG)(transcribe.transcribe_cmd)
app.command("speak", epilog=speak.SPEAK_EPILOG)(speak.speak_cmd)
app.command("dialog", epilog=speak.DIALOG_EPILOG)(speak.dialog_cmd)
app.command("voices", epilog=speak.VOICES_EPILOG)(speak.voices_cmd)
app.command("models", epilog=models.MODELS_EPILOG)(models.models_cmd)
app.command("download", epilog=models.DOWNLOAD_EPILOG)(models.download_cmd)
app.command("bench", epilog=bench.BENCH_EPILOG)(bench.bench_cmd)
app.command("kernels")(kernels.kernels_cmd)
app.command("serve")(serve.serve_cmd)


def interrupted() -> NoReturn:
    """Ctrl-C: one line on stderr and exit code 130."""
    print("dsm: interrupted", file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)


def main(argv: list[str] | None = None) -> None:
    if hasattr(signal, "SIGPIPE"):  # `dsm ... | head` ends quietly, like other Unix tools
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        # Without standalone mode Typer *returns* the exit code of typer.Exit (and of Ctrl-C) instead of raising.
        code = app(args=argv, standalone_mode=False)
    except DsmError as exc:
        print(f"dsm: error: {error_message(exc)}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        interrupted()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # Click's own exceptions (Typer vendors click, so match them by shape, not by import).
        if type(exc).__name__ == "Abort":  # older Typer: a Ctrl-C it caught
            interrupted()
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if code == EXIT_INTERRUPTED:  # Typer turns a Ctrl-C it caught (model loading, `dsm voices`, ...) into Exit(130)
        interrupted()
    if isinstance(code, int) and code:
        sys.exit(code)
