"""Mimi tensor names: other spellings (reference module names, older buffer names) → the released ones.

The codec never reads files: :func:`dsmcli.hub.loaders.load_mimi` reads the safetensors and hands the state dict to
:meth:`dsmcli.codec.model.Mimi.from_state`, which renames it with :func:`released_names`.
"""

from __future__ import annotations

import torch

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
