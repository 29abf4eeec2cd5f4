"""Reference Mimi codecs with usable random weights, saved under the released tensor names.

A fresh reference Mimi has all-zero codebooks (every code is 0) and norms/layer scales at their
init values, so parity tests against it prove little. ``build_ref_mimi`` therefore:
  * perturbs every LayerNorm weight/bias and layer scale away from its init,
  * fills every codebook with centroids sampled (plus noise) from the real-speech residual it
    quantizes (level by level, as the split RVQ encodes), and stores them as
    ``embedding_sum = centroid * cluster_usage`` with a non-trivial ``cluster_usage`` so the
    division by the usage is exercised too.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fixturelib.audio import SHARED_DATA, speech_24k

# Calibration audio for the codebooks: (file, offset s, seconds), one batch item each; zero-padded
# (loona.mp3 is ~1 s long, so its item is mostly silence, which real inputs also contain).
CALIBRATION_SPEECH = (("bria.mp3", 0.0, 12.0), ("bria.mp3", 24.0, 12.0), ("loona.mp3", 0.0, 12.0))
LAYER_SCALE_RANGE = (0.05, 0.3)
NORM_WEIGHT_RANGE = (0.6, 1.4)
NORM_BIAS_STD = 0.1
CLUSTER_USAGE_RANGE = (0.5, 2.0)
CENTROID_NOISE = 1.0  # noise on sampled centroids, relative to the residual std per dim (see _set_codebook)


def tiny_mimi_config() -> dict[str, Any]:
    """Released Mimi structure (ratios, 12.5 Hz, 32 split-RVQ codebooks) at tiny sizes.

    Same dict format as the reference ``loaders._mimi_config`` (``mimi_config.json``).
    The transformer context is 16 steps so the ring-buffer subtlety shows in short tests.
    """
    from moshi.models import loaders

    config = copy.deepcopy(loaders._mimi_config)
    dimension = 32
    config["seanet"].update(dimension=dimension, n_filters=8)
    config["quantizer"].update(dimension=16, bins=64, input_dimension=dimension, output_dimension=dimension)
    config["transformer"].update(
        d_model=dimension,
        num_heads=2,
        num_layers=2,
        dim_feedforward=64,
        context=16,
        input_dimension=dimension,
        output_dimensions=[dimension],
    )
    return config


def released_mimi_config() -> dict[str, Any]:
    """The reference's built-in Mimi hyper-params (used when ``mimi_config`` is None)."""
    from moshi.models import loaders

    return copy.deepcopy(loaders._mimi_config)


def build_ref_mimi(mimi_config: dict[str, Any] | None, seed: int) -> nn.Module:
    """A reference ``MimiModel`` (fp32, eval, all 32 codebooks active) with usable random weights.

    ``mimi_config=None`` builds the released sizes. The caller's global RNG is left untouched.
    """
    from moshi.models import loaders

    config = released_mimi_config() if mimi_config is None else copy.deepcopy(mimi_config)
    n_q = config["quantizer"]["n_q"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = loaders.get_mimi(None, config, device="cpu", num_codebooks=n_q)
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            _perturb_norms_and_scales(model, generator)
            _fill_codebooks(model, calibration_audio(), generator)
    model.eval()
    return model


def calibration_audio() -> torch.Tensor:
    """Real speech ``[B, 1, N]`` at 24 kHz used to size the codebooks."""
    clips = [speech_24k(SHARED_DATA / name, seconds, offset) for name, offset, seconds in CALIBRATION_SPEECH]
    return torch.stack([torch.from_numpy(clip) for clip in clips])[:, None, :]


def _uniform(shape: torch.Size, bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=generator)


def _perturb_norms_and_scales(model: nn.Module, generator: torch.Generator) -> None:
    from moshi.modules.transformer import LayerScale

    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.weight.copy_(_uniform(module.weight.shape, NORM_WEIGHT_RANGE, generator))
            module.bias.copy_(NORM_BIAS_STD * torch.randn(module.bias.shape, generator=generator))
        elif isinstance(module, LayerScale):
            module.scale.copy_(_uniform(module.scale.shape, LAYER_SCALE_RANGE, generator))


def _set_codebook(codebook: nn.Module, residual: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Centroids drawn from ``residual`` ``[N, D]`` (plus noise); returns the effective centroids ``[bins, D]``.

    Sampling the data itself (as a k-means init would) keeps most codes in use. The noise, as large
    as the residual spread, keeps the residual from shrinking level after level: with exact data
    points, speech seen at calibration would leave deep levels quantizing float rounding noise,
    where codes depend on summation order (useless for parity tests).
    """
    bins, dim = codebook.embedding_sum.shape
    picks = torch.randint(0, residual.shape[0], (bins,), generator=generator)
    if residual.shape[0] >= bins:
        picks = torch.randperm(residual.shape[0], generator=generator)[:bins]
    noise = CENTROID_NOISE * residual.std(dim=0) * torch.randn(bins, dim, generator=generator)
    centroids = residual[picks] + noise
    usage = _uniform(torch.Size([bins]), CLUSTER_USAGE_RANGE, generator)
    codebook.embedding_sum.copy_(centroids * usage[:, None])
    codebook.cluster_usage.copy_(usage)
    codebook._initialized.fill_(1.0)
    codebook._embedding = None  # drop the reference's cached centroids
    return codebook.embedding_sum / codebook.cluster_usage.clamp(min=codebook.epsilon)[:, None]


def _fill_rvq(rvq: nn.Module, latent: torch.Tensor, generator: torch.Generator) -> None:
    """Fill one residual VQ level by level from the latent ``[B, C, T]`` it would encode."""
    projected = rvq.input_proj(latent)  # [B, D, T]
    residual = projected.transpose(1, 2).reshape(-1, projected.shape[1])  # [N, D]
    for layer in rvq.vq.layers:
        centroids = _set_codebook(layer._codebook, residual, generator)
        codes = torch.cdist(residual[None], centroids[None])[0].argmin(dim=-1)
        residual = residual - centroids[codes]


def _fill_codebooks(model: nn.Module, wav: torch.Tensor, generator: torch.Generator) -> None:
    latent = model.encode_to_latent(wav, quantize=False)  # [B, C, T] at 12.5 Hz
    _fill_rvq(model.quantizer.rvq_first, latent, generator)
    _fill_rvq(model.quantizer.rvq_rest, latent, generator)


def released_mimi_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under the released file names (FORMAT.md §2.9).

    The reference stores ``self_attn.in_projs.0.weight`` / ``out_projs.0.weight``; the released
    file (and the Rust loader) say ``self_attn.in_proj_weight`` / ``self_attn.out_proj.weight``.
    """
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("self_attn.in_projs.0.weight", "self_attn.in_proj_weight")
        key = key.replace("self_attn.out_projs.0.weight", "self_attn.out_proj.weight")
        state[key] = value.detach().contiguous().clone()
    return state


def save_mimi(model: nn.Module, path: Path | str) -> Path:
    """Write ``model`` as a released-layout Mimi safetensors file (float32)."""
    from safetensors.torch import save_file

    state = released_mimi_state(model)
    bad = [k for k, v in state.items() if v.dtype != torch.float32]
    if bad:
        raise ValueError(f"released Mimi files are float32; {bad[0]} is not")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def load_ref_mimi(path: Path | str, mimi_config: dict[str, Any] | None, num_codebooks: int) -> nn.Module:
    """Load a Mimi file through the reference loader (strict), as ``CheckpointInfo.get_mimi`` does."""
    from moshi.models import loaders

    return loaders.get_mimi(Path(path), mimi_config, device="cpu", num_codebooks=num_codebooks)


def encode_voice_latent(model: nn.Module, wav: torch.Tensor) -> torch.Tensor:
    """Unquantized 12.5 Hz latent ``[1, C, T]`` of ``wav`` ``[N]`` (24 kHz), as ``tts_make_voice`` does."""
    if wav.dim() != 1:
        raise ValueError("expected mono samples [N]")
    with torch.no_grad():
        return model.encode_to_latent(wav[None, None, :], quantize=False).contiguous()


__all__ = [
    "build_ref_mimi",
    "encode_voice_latent",
    "load_ref_mimi",
    "released_mimi_config",
    "released_mimi_state",
    "save_mimi",
    "tiny_mimi_config",
]
