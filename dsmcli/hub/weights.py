"""Safetensors in, modules out: the one place weights are read (never pickle)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

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


def cast_floats(state: dict[str, torch.Tensor], dtype_for: Callable[[str], torch.dtype]) -> dict[str, torch.Tensor]:
    """Cast every floating tensor to ``dtype_for(key)``; integer buffers are left alone."""
    return {k: (v.to(dtype_for(k)) if v.is_floating_point() else v) for k, v in state.items()}


def assign_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly assign ``state`` into ``module`` (possibly built on the meta device).

    Missing, unexpected and mis-shaped keys are reported by name (with both shapes).
    """
    expected = module.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise ModelLoadError(f"{source}: missing tensor {missing[0]}" + _more(missing))
    if unexpected:
        raise ModelLoadError(f"{source}: unexpected tensor {unexpected[0]}" + _more(unexpected))
    for key, param in expected.items():
        if tuple(param.shape) != tuple(state[key].shape):
            raise ModelLoadError(
                f"{source}: tensor {key} has shape {tuple(state[key].shape)} in the file, "
                f"the model expects {tuple(param.shape)}"
            )
    module.load_state_dict(state, strict=True, assign=True)


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
