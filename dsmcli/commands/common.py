"""Flag parsing shared by the task commands (device, dtype, kernels)."""

from __future__ import annotations

import torch
import typer

from dsmcli.cli import PERFORMANCE
from dsmcli.errors import UsageError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def dtype_option():
    return typer.Option("auto", "--dtype", metavar="DTYPE", rich_help_panel=PERFORMANCE,
                        help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16.")


def resolve_device(name: str) -> torch.device:
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


def resolve_dtype(name: str, device_name: str) -> torch.dtype:
    if name == "auto":
        # bf16 matmuls are slower than fp32 on most CPUs; GPUs want bf16.
        return torch.bfloat16 if resolve_device(device_name).type == "cuda" else torch.float32
    if name.lower() not in DTYPES:
        raise UsageError(f"unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    return DTYPES[name.lower()]


KERNELS_HELP = ("Native CPU kernels: auto (when they build, else torch), native (a kernel that cannot be built is "
                "an error), torch (none; also DSM_NO_NATIVE_KERNELS=1).")


def apply_kernels(name: str) -> str:
    """``--kernels``: select :class:`~dsmcli.kernels.KernelChoice` for this process (before any model loads)."""
    from dsmcli import kernels

    try:
        choice = kernels.KernelChoice(name.lower())
    except ValueError:
        raise UsageError(f"--kernels: unknown choice {name!r} (auto, native, torch)") from None
    kernels.use_kernels(choice)
    return choice.value


def kernels_option():
    return typer.Option("auto", "--kernels", metavar="CHOICE", rich_help_panel=PERFORMANCE, help=KERNELS_HELP,
                        callback=apply_kernels)
