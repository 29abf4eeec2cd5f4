"""State dicts into modules: cast floating tensors, then assign strictly with named errors (no file access)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from dsmcli.errors import ModelLoadError


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
