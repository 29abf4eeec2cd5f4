"""Released LM tensor names -> :class:`~dsmcli.engine.lm.LM` parameter names (FORMAT.md §3.8, §3.9).

The module tree keeps the released names except in two places:

* attention projections are one stacked parameter per weight set: ``...attn.in_proj`` ``[W, 3*dim, dim]`` and
  ``...attn.out_proj`` ``[W, dim, dim]``. A file may hold them packed (``in_proj_weight`` or ``in_proj.weight``
  ``[W*3*dim, dim]``, ``out_proj.weight`` ``[W*dim, dim]``, as the release exporter writes them) or split
  (``in_projs.{i}.weight``, ``out_projs.{i}.weight``, as the reference module names them); both are accepted.
* the depformer's pieces live under ``depformer.`` (``RENAMES`` below), and conditioners under
  ``conditioning.``.

The mapping only renames and reshapes (views where possible, so weights can be shared with another model).
A model without depformer (``dep_q = 0``) built by the reference without ``depformer_multi_linear`` still
carries one unused ``depformer_in.0.weight``; it is dropped (``drop_depformer``).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from dsmcli.errors import ModelLoadError

# (file prefix, module prefix); the first match wins.
RENAMES: tuple[tuple[str, str], ...] = (
    ("depformer_in.", "depformer.input_projs."),
    ("depformer_text_emb.", "depformer.text_emb."),
    ("depformer_emb.", "depformer.audio_emb."),
    ("depformer_norms.", "depformer.out_norms."),
    ("depformer.layers.", "depformer.transformer.layers."),
    ("linears.", "depformer.heads."),
    ("condition_provider.conditioners.", "conditioning.conditioners."),
)
_ATTENTION = r"(?P<prefix>.*\.(?:self_attn|cross_attention))\."
_PACKED = re.compile(_ATTENTION + r"(?P<kind>in|out)_proj(?:_weight|\.weight)$")
_SPLIT = re.compile(_ATTENTION + r"(?P<kind>in|out)_projs\.(?P<index>\d+)\.weight$")


def _rename(key: str) -> str:
    for old, new in RENAMES:
        if key.startswith(old):
            return new + key.removeprefix(old)
    return key


def _stack_rows(kind: str, weight: Tensor, key: str) -> Tensor:
    """A packed ``[W*rows, dim]`` projection as ``[W, rows, dim]`` (rows = 3*dim for ``in``, dim for ``out``)."""
    dim = weight.shape[-1]
    rows = 3 * dim if kind == "in" else dim
    if weight.dim() != 2 or weight.shape[0] % rows:
        raise ModelLoadError(f"tensor {key} has shape {tuple(weight.shape)}: not a stack of [{rows}, {dim}] blocks")
    return weight.view(-1, rows, dim)


UNUSED_WITHOUT_DEPFORMER = "depformer_in."


def file_to_module_state(state: dict[str, Tensor], drop_depformer: bool = False) -> dict[str, Tensor]:
    """Rename/reshape a released LM state dict (either attention layout) into :class:`LM` parameter names."""
    out: dict[str, Tensor] = {}
    split: dict[str, dict[int, Tensor]] = {}
    for key, value in state.items():
        if drop_depformer and key.startswith(UNUSED_WITHOUT_DEPFORMER):
            continue
        name = _rename(key)
        if m := _PACKED.match(name):
            target = f"{m['prefix']}.{m['kind']}_proj"
            if target in out or target in split:
                raise ModelLoadError(f"tensor {key}: its attention weights appear twice in the file")
            out[target] = _stack_rows(m["kind"], value, key)
        elif m := _SPLIT.match(name):
            split.setdefault(f"{m['prefix']}.{m['kind']}_proj", {})[int(m["index"])] = value
        else:
            out[name] = value
    for target, parts in split.items():
        if target in out:
            raise ModelLoadError(f"{target}: attention weights appear both packed and split in the file")
        if sorted(parts) != list(range(len(parts))):
            raise ModelLoadError(f"{target}: weight sets {sorted(parts)} are not 0..{len(parts) - 1}")
        blocks = [parts[i] for i in range(len(parts))]
        out[target] = blocks[0][None] if len(blocks) == 1 else torch.stack(blocks)
    return out
