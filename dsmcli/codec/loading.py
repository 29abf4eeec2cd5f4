"""Mimi weights from disk: resolve the file and config, build on ``meta``, assign the tensors strictly."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dsmcli.codec.config import MimiConfig
from dsmcli.errors import ModelLoadError
from dsmcli.hub.files import load_checkpoint
from dsmcli.hub.weights import assign_state, cast_floats, read_safetensors

if TYPE_CHECKING:
    from dsmcli.codec.model import Mimi

WEIGHT_SUFFIXES = (".safetensors", ".sft")
# Other spellings of tensor names (reference module names, older buffer names) → the released names.
_SUFFIX_ALIASES = (
    (".self_attn.in_projs.0.weight", ".self_attn.in_proj_weight"),
    (".self_attn.in_proj.weight", ".self_attn.in_proj_weight"),
    (".self_attn.out_projs.0.weight", ".self_attn.out_proj.weight"),
    ("._codebook.inited", "._codebook._initialized"),
    ("._codebook.cluster_size", "._codebook.cluster_usage"),
    ("._codebook.embed_avg", "._codebook.embedding_sum"),
    ("._codebook.embed_sum", "._codebook.embedding_sum"),
)


def resolve_mimi(path_or_name: str | Path) -> tuple[Path, MimiConfig]:
    """A bare ``.safetensors`` file (released sizes), or a model name / Hub repo / local directory whose
    config.json names the Mimi file (``mimi_name``) and optionally a hyper-parameter override."""
    path = Path(path_or_name).expanduser()
    if path.suffix in WEIGHT_SUFFIXES:
        if not path.is_file():
            raise ModelLoadError(f"Mimi weights not found: {path}")
        return path, MimiConfig()
    checkpoint = load_checkpoint(path_or_name)
    raw = checkpoint.mimi_config
    config = MimiConfig() if raw is None else MimiConfig.from_dict(raw)
    return checkpoint.mimi_path, config


def released_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename alternative tensor spellings to the released ones; other keys pass through."""
    renamed = {}
    for key, value in state.items():
        for old, new in _SUFFIX_ALIASES:
            if key.endswith(old):
                key = key[: -len(old)] + new
                break
        renamed[key] = value
    return renamed


def load_mimi(cls: type[Mimi], path_or_name: str | Path, device: torch.device | str, dtype: torch.dtype,
              num_codebooks: int | None) -> Mimi:
    path, config = resolve_mimi(path_or_name)
    with torch.device("meta"):
        model = cls(config)
    state = released_names(read_safetensors(path, device))
    assign_state(model, cast_floats(state, lambda _key: dtype), path.name)
    model.eval().requires_grad_(False)
    if num_codebooks is not None:
        try:
            model.set_num_codebooks(num_codebooks)
        except ValueError as exc:
            raise ModelLoadError(f"{path.name}: {exc}") from None
    return model
