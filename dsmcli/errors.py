"""Expected failures and their exit codes (documented in README.md).

Library code raises these; the CLI turns them into one line on stderr and the exit code.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_INPUT = 4
EXIT_PARTIAL = 5
EXIT_INTERRUPTED = 130


class DsmError(Exception):
    """An expected failure with a one-line message for the user."""

    exit_code = EXIT_RUNTIME


class UsageError(DsmError):
    exit_code = EXIT_USAGE


class OptionError(UsageError):
    """A per-run option out of range. Library code names the option by its field (``option``, e.g. ``n_q``); the
    CLI, which knows the flag spelling, rewrites the message with it (``dsmcli.commands.common.option_flags``)."""

    def __init__(self, option: str, detail: str) -> None:
        super().__init__(f"{option} {detail}")
        self.option, self.detail = option, detail


class ModelLoadError(DsmError):
    """Model cannot be found, downloaded, or loaded (missing file, offline cache miss, corrupt weights)."""

    exit_code = EXIT_MODEL


class InputError(DsmError):
    """An input (audio, text, voice) cannot be read or decoded."""

    exit_code = EXIT_INPUT


class OutputError(DsmError):
    """An output cannot be written (exists without --force, unwritable directory)."""

    exit_code = EXIT_RUNTIME


class DeviceError(DsmError):
    """No audio device / PortAudio missing."""

    exit_code = EXIT_RUNTIME
