"""What every command module shares: the `--help` option panels and examples, device / dtype / kernels flags, and the
spelling of flags in error messages (:func:`error_message`). No torch at import: `dsm --help` builds every command's help from here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import typer

from dsmcli.errors import DsmError, OptionError, OptionInputError, UsageError, option_message

if TYPE_CHECKING:
    import torch

# Option panels of `--help` (rich_help_panel=...): every option of every command sits in one of these.
INPUT, OUTPUT, MODEL, DECODING, PERFORMANCE, DEVICES = "Input", "Output", "Model", "Decoding", "Performance", "Devices"

DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
# Library option fields (OptionError.option) → the flag a user typed; other fields get --field-with-dashes.
FLAGS: Mapping[str, str] = {"padding": "padding"}


def examples(*lines: str) -> str:
    """A command's help epilog: "Examples" then one command line each (Rich markup in them is escaped)."""
    escaped = (line.replace("[", "\\[") for line in lines)
    return "[bold]Examples[/bold]\n\n" + "\n".join(escaped)


def flag_name(option: str) -> str:
    """The CLI spelling of a library option field: ``padding_bonus`` → ``--padding-bonus``."""
    return FLAGS.get(option, "--" + option.replace("_", "-"))


def error_message(error: DsmError) -> str:
    """The one line a failure prints: an option named by the library (``n_q``) is spelled as its flag (``--n-q``)."""
    if isinstance(error, (OptionError, OptionInputError)):
        return option_message(flag_name(error.option), error.detail)
    return str(error)


def dtype_option():
    return typer.Option("auto", "--dtype", metavar="DTYPE", rich_help_panel=PERFORMANCE,
                        help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16.")


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine")
    return device


def parse_dtype(name: str) -> torch.dtype:
    """An explicit dtype name (``float32``, ``bf16``, ...; not ``auto``) → the torch dtype (UsageError if unknown)."""
    import torch

    dtypes = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
              "float16": torch.float16, "fp16": torch.float16}
    if name.lower() not in dtypes:
        raise UsageError(f"unknown dtype {name!r} (choose from {', '.join(DTYPE_NAMES)})")
    return dtypes[name.lower()]


def resolve_dtype(name: str, device_name: str) -> torch.dtype:
    import torch

    if name == "auto":
        # bf16 matmuls are slower than fp32 on most CPUs; GPUs want bf16.
        return torch.bfloat16 if resolve_device(device_name).type == "cuda" else torch.float32
    return parse_dtype(name)


KERNELS_HELP = ("Native CPU kernels: auto (when they build, else torch), native (a kernel that cannot be built is "
                "an error), torch (none; also DSM_NO_NATIVE_KERNELS=1).")


def check_kernels(name: str) -> str:
    """``--kernels``: the :class:`~dsmcli.kernels.KernelChoice` value, checked before any model loads (an unknown
    choice is a usage error; ``native`` under ``DSM_NO_NATIVE_KERNELS=1`` an error). The command passes it down
    to what it loads and runs (its request, the task bundle, the streams): nothing process-wide is set."""
    from dsmcli import kernels

    try:
        choice = kernels.KernelChoice(name.lower())
    except ValueError:
        raise UsageError(f"--kernels: unknown choice {name!r} (auto, native, torch)") from None
    return kernels.check_choice(choice).value


def kernels_option():
    return typer.Option("auto", "--kernels", metavar="CHOICE", rich_help_panel=PERFORMANCE, help=KERNELS_HELP,
                        callback=check_kernels)
