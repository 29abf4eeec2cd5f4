"""Safetensors files → state dicts: the one place weights are read (never pickle). Assigning them into modules
is :mod:`dsmcli.nn.state`."""

from __future__ import annotations

from pathlib import Path

import torch

from dsmcli.errors import ModelLoadError


def read_safetensors(path: Path | str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a corrupt or non-safetensors file is a ModelLoadError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix not in (".safetensors", ".sft"):
        raise ModelLoadError(f"{path.name}: only .safetensors weights are loaded (never pickle)")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ModelLoadError(f"{path.name} is not a readable safetensors file: {first_line}") from None
