"""Reference DSM language models with usable random weights, saved under the released tensor names.

``build_ref_lm`` goes through the reference's own ``get_moshi_lm(None, lm_kwargs=...)`` so the
conditioners and the fuser are built exactly as for a downloaded checkpoint. It then
  * perturbs every RMSNorm ``alpha`` and LayerNorm weight/bias away from 1 / 0,
  * scales up the ``text_linear`` rows of PAD and end-of-padding so greedy decoding emits them,
  * rounds every tensor outside ``condition_provider.*`` / ``fuser.*`` to bfloat16 values (kept
    in float32), so the released bf16 file is lossless: the fp32 in-memory model, the file and
    ``get_moshi(dtype=float32)`` all hold bit-identical weights.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

NORM_WEIGHT_RANGE = (0.6, 1.4)
NORM_BIAS_STD = 0.1
# text_linear row scales {token id: factor}; tuned so greedy STT on real speech codes emits a
# healthy mix of PAD (3), end-of-padding (0) and word pieces.
TEXT_ROW_SCALES = {"pad": 4.0, "end_pad": 3.0}
FP32_PREFIXES = ("condition_provider.", "fuser.")  # kept float32 in released files
RELEASED_LM_DTYPE = torch.bfloat16

_SPLIT_PROJ = re.compile(r"^(?P<prefix>.*\.(?:self_attn|cross_attention)\.)(?P<kind>in|out)_projs\.(?P<i>\d+)\.weight$")


def build_ref_lm(
    lm_kwargs: dict[str, Any],
    seed: int,
    text_row_scales: dict[str, float] | None = None,
    calibration_codes: torch.Tensor | None = None,
) -> nn.Module:
    """A reference ``LMModel`` in float32 (eval) with perturbed norms and a boosted PAD/EPAD head.

    ``lm_kwargs`` is the architecture part of a config.json (what ``CheckpointInfo.lm_config`` holds);
    it is not modified. The PAD/EPAD rows of ``text_linear`` are multiplied by ``text_row_scales``
    (default ``TEXT_ROW_SCALES``) or, for an STT model given real speech ``calibration_codes``
    ``[B, n_q, T]``, calibrated so greedy decoding emits a healthy token mix (``calibrate.py``).
    The caller's global RNG is left untouched.
    """
    from moshi.models import loaders

    from fixturelib.calibrate import calibrate_text_head

    scales = TEXT_ROW_SCALES if text_row_scales is None else text_row_scales
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = loaders.get_moshi_lm(None, lm_kwargs=copy.deepcopy(lm_kwargs), device="cpu", dtype=torch.float32)
        model.eval()
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            _perturb_norms(model, generator)
            if calibration_codes is None:
                _scale_text_rows(model, scales)
            else:
                calibrate_text_head(model, calibration_codes)
            _round_released_dtype(model)
    return model


def _uniform(shape: torch.Size, bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=generator)


def _perturb_norms(model: nn.Module, generator: torch.Generator) -> None:
    from moshi.modules.transformer import RMSNorm

    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.alpha.copy_(_uniform(module.alpha.shape, NORM_WEIGHT_RANGE, generator))
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            module.weight.copy_(_uniform(module.weight.shape, NORM_WEIGHT_RANGE, generator))
            module.bias.copy_(NORM_BIAS_STD * torch.randn(module.bias.shape, generator=generator))


def _scale_text_rows(model: nn.Module, scales: dict[str, float]) -> None:
    rows = {"pad": model.text_padding_token_id, "end_pad": model.end_of_text_padding_id}
    out_card = model.text_linear.weight.shape[0]
    for name, factor in scales.items():
        row = rows[name]
        if row < out_card:
            model.text_linear.weight[row] *= factor


def _round_released_dtype(model: nn.Module) -> None:
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not name.startswith(FP32_PREFIXES):
            tensor.copy_(tensor.to(RELEASED_LM_DTYPE).float())


def _attention_mult(model: nn.Module) -> dict[str, int]:
    """Prefix of every attention module (``...self_attn.``) → number of per-step weight sets."""
    from moshi.modules.transformer import StreamingMultiheadAttention

    return {f"{name}.": m.mult for name, m in model.named_modules() if isinstance(m, StreamingMultiheadAttention)}


def released_lm_state(model: nn.Module, packed_depformer: bool = True) -> dict[str, torch.Tensor]:
    """The model's state dict under the released names and dtypes (FORMAT.md §3.8-3.9).

    Attention projections become ``{prefix}in_proj_weight`` / ``{prefix}out_proj.weight``
    (per-step depformer weights packed along dim 0 when ``packed_depformer``; otherwise the
    depformer keeps the split ``in_projs.{i}.weight`` form). Floats are bf16, except
    ``condition_provider.*`` / ``fuser.*`` (float32).
    """
    mults = _attention_mult(model)
    state: dict[str, torch.Tensor] = {}
    packed: dict[str, list[torch.Tensor]] = {}
    for key, value in model.state_dict().items():
        value = value.detach()
        if value.is_floating_point() and not key.startswith(FP32_PREFIXES):
            value = value.to(RELEASED_LM_DTYPE)
        match = _SPLIT_PROJ.match(key)
        is_depformer = key.startswith("depformer.")
        if match is None or (is_depformer and not packed_depformer):
            state[key] = value.contiguous().clone()
            continue
        name = "in_proj_weight" if match["kind"] == "in" else "out_proj.weight"
        packed.setdefault(match["prefix"] + name, [None] * mults[match["prefix"]])[int(match["i"])] = value
    for key, parts in packed.items():
        state[key] = torch.cat(parts, dim=0).contiguous()
    return dict(sorted(state.items()))


def save_lm(model: nn.Module, path: Path | str, packed_depformer: bool = True) -> Path:
    """Write ``model`` as a released-layout LM safetensors file (see ``released_lm_state``)."""
    from safetensors.torch import save_file

    state = released_lm_state(model, packed_depformer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def load_ref_lm(path: Path | str, lm_kwargs: dict[str, Any], dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load an LM file through the reference loader (strict, meta + assign), as ``get_moshi`` does."""
    from moshi.models import loaders

    return loaders.get_moshi_lm(Path(path), lm_kwargs=copy.deepcopy(lm_kwargs), device="cpu", dtype=dtype)
