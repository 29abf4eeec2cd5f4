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


class _NamesAnOption:
    """An error about one per-run option. Library code names the option by its field (``option``: ``n_q``,
    ``prompt_audio``), never by a flag; the CLI, which knows the flag spelling, words the message with it
    (``dsmcli.commands.common.error_message``: ``--n-q must be ...``)."""

    def __init__(self, option: str, detail: str) -> None:
        super().__init__(option_message(option, detail))
        self.option, self.detail = option, detail


def option_message(name: str, detail: str) -> str:
    """``name`` then ``detail``, joined by a space unless the detail starts with a colon."""
    return f"{name}{'' if detail.startswith(':') else ' '}{detail}"


class OptionError(_NamesAnOption, UsageError):
    """A per-run option with a bad value (exit code 2)."""


class OptionInputError(_NamesAnOption, InputError):
    """The input an option names cannot be read (exit code 4), e.g. the prompt audio file."""
