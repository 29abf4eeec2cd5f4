"""Mimi hyper-parameters, parsed once from the reference ``_mimi_config`` schema (FORMAT.md §2).

The defaults are the released sizes. A checkpoint may carry a ``mimi_config_name`` JSON with the
same schema (``sample_rate``, ``channels``, ``frame_rate``, ``seanet``, ``quantizer``,
``transformer``); :meth:`MimiConfig.from_dict` reads it and rejects unknown keys and values this
implementation does not support, naming them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum
from fractions import Fraction
from typing import Any

from dsmcli.constants import FRAME_RATE, SAMPLE_RATE, exact_div
from dsmcli.errors import ModelLoadError
from dsmcli.nn.norms import NormKind


class PadMode(str, Enum):
    """How a causal conv fills its left context before the first sample."""

    CONSTANT = "constant"  # zeros
    REPLICATE = "replicate"  # the first sample, repeated


@dataclass(frozen=True)
class SEANetConfig:
    """Convolutional encoder/decoder (``seanet`` section). ``ratios`` are in decoder order."""

    channels: int = 1
    dimension: int = 512
    n_filters: int = 64
    n_residual_layers: int = 1
    ratios: tuple[int, ...] = (8, 6, 5, 4)
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    elu_alpha: float = 1.0
    pad_mode: PadMode = PadMode.CONSTANT
    true_skip: bool = True

    @property
    def hop_length(self) -> int:
        """Audio samples per encoder latent step (960 for the released Mimi: 25 Hz)."""
        return math.prod(self.ratios)


@dataclass(frozen=True)
class QuantizerConfig:
    """Split residual vector quantizer (``quantizer`` section)."""

    dimension: int = 256
    n_q: int = 32
    bins: int = 2048
    input_dimension: int = 512
    output_dimension: int = 512
    n_q_semantic: int = 1
    epsilon: float = 1e-5  # cluster_usage floor when turning embedding_sum into centroids


@dataclass(frozen=True)
class TransformerConfig:
    """Encoder/decoder transformer (``transformer`` section): causal, RoPE, GELU FFN, layer scale."""

    d_model: int = 512
    num_heads: int = 8
    num_layers: int = 8
    dim_feedforward: int = 2048
    context: int | None = 250
    max_period: float = 10_000.0
    norm: NormKind = NormKind.LAYER_NORM
    layer_scale: float | None = 0.01
    rope: bool = True
    input_dimension: int = 512
    output_dimension: int = 512

    @property
    def head_dim(self) -> int:
        return exact_div(self.d_model, self.num_heads)


@dataclass(frozen=True)
class MimiConfig:
    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    frame_rate: Fraction = FRAME_RATE
    seanet: SEANetConfig = field(default_factory=SEANetConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    @property
    def frame_size(self) -> int:
        """Audio samples per code frame (1920 = 80 ms for the released Mimi)."""
        return exact_div(self.sample_rate, self.frame_rate)

    def codebooks(self, num_codebooks: int | None) -> int:
        """Codes per frame for a request of ``num_codebooks`` (all by default); ValueError outside 1..n_q."""
        if num_codebooks is None:
            return self.quantizer.n_q
        if not 1 <= num_codebooks <= self.quantizer.n_q:
            raise ValueError(f"num_codebooks must be in 1..{self.quantizer.n_q}, got {num_codebooks}")
        return num_codebooks

    @property
    def encoder_frame_rate(self) -> Fraction:
        return Fraction(self.sample_rate, self.seanet.hop_length)

    @property
    def resample_stride(self) -> int:
        """Encoder latent steps per code frame (2: the learnt 25 Hz → 12.5 Hz conv); 1 = no resampling."""
        return exact_div(self.encoder_frame_rate, self.frame_rate)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MimiConfig:
        """Parse the reference ``_mimi_config`` dict format (e.g. a ``mimi_config.json``)."""
        try:
            return _parse(raw)
        except ModelLoadError:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"invalid Mimi config: {exc}") from None


# ----------------------------------------------------------------------------- parsing

_TOP_KEYS = {"sample_rate", "channels", "frame_rate", "seanet", "quantizer", "transformer"}
# Keys of the reference constructors that only matter for training: accepted and ignored.
_QUANTIZER_TRAINING_KEYS = {"q_dropout", "no_quantization_rate", "decay", "threshold_usage_ratio",
                            "replaced_usage_ratio"}
_TRANSFORMER_IGNORED_KEYS = {"betas", "checkpointing", "positional_scale"}  # training / sin-embedding only


def _parse(raw: dict[str, Any]) -> MimiConfig:
    _check_keys("Mimi config", raw, _TOP_KEYS)
    defaults = MimiConfig()
    channels = int(raw.get("channels", defaults.channels))
    seanet = _parse_seanet(dict(raw.get("seanet", {})), channels)
    config = MimiConfig(
        sample_rate=int(raw.get("sample_rate", defaults.sample_rate)),
        channels=channels,
        frame_rate=Fraction(str(raw.get("frame_rate", defaults.frame_rate))),
        seanet=seanet,
        quantizer=_parse_quantizer(dict(raw.get("quantizer", {})), seanet.dimension),
        transformer=_parse_transformer(dict(raw.get("transformer", {})), seanet.dimension),
    )
    _validate_rates(config)
    return config


def _validate_rates(config: MimiConfig) -> None:
    """The frame size and the encoder → code frame resampling stride must be whole numbers."""
    try:
        exact_div(config.sample_rate, config.frame_rate)
        exact_div(config.encoder_frame_rate, config.frame_rate)
    except ValueError as exc:
        raise ModelLoadError(f"Mimi config: inconsistent rates ({exc})") from None


def _check_keys(section: str, raw: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ModelLoadError(f"{section}: unknown key {unknown[0]!r}" + (f" (+{len(unknown) - 1} more)" if len(unknown) > 1 else ""))


def _require(section: str, key: str, value: Any, allowed: Any) -> None:
    if value != allowed:
        raise ModelLoadError(f"{section}: {key}={value!r} is not supported (only {allowed!r})")


def _parse_seanet(raw: dict[str, Any], channels: int) -> SEANetConfig:
    section = "Mimi config seanet"
    names = {f.name for f in fields(SEANetConfig)} - {"elu_alpha"}
    fixed = {"causal": True, "activation": "ELU", "norm": "none", "final_activation": None}
    _check_keys(section, raw, names | set(fixed) | {"activation_params", "norm_params", "disable_norm_outer_blocks",
                                                     "final_activation_params"})
    for key, allowed in fixed.items():
        _require(section, key, raw.pop(key, allowed), allowed)
    for unused in ("norm_params", "disable_norm_outer_blocks", "final_activation_params"):
        raw.pop(unused, None)  # meaningless with norm "none" and no final activation
    params = dict(raw.pop("activation_params", None) or {})
    _check_keys(f"{section} activation_params", params, {"alpha"})
    if "ratios" in raw:
        raw["ratios"] = tuple(int(r) for r in raw["ratios"])
    if "pad_mode" in raw:
        raw["pad_mode"] = PadMode(raw["pad_mode"])
    config = SEANetConfig(elu_alpha=float(params.get("alpha", 1.0)), **raw)
    _require(section, "channels", config.channels, channels)
    return config


def _parse_quantizer(raw: dict[str, Any], latent_dim: int) -> QuantizerConfig:
    section = "Mimi config quantizer"
    names = {f.name for f in fields(QuantizerConfig)} - {"epsilon"}
    _check_keys(section, raw, names | _QUANTIZER_TRAINING_KEYS)
    config = QuantizerConfig(**{k: v for k, v in raw.items() if k in names})
    _require(section, "input_dimension", config.input_dimension, latent_dim)
    _require(section, "output_dimension", config.output_dimension, latent_dim)
    if not 1 <= config.n_q_semantic < config.n_q:
        raise ModelLoadError(f"{section}: need 1 <= n_q_semantic < n_q, got {config.n_q_semantic}, {config.n_q}")
    return config


def _parse_transformer(raw: dict[str, Any], latent_dim: int) -> TransformerConfig:
    section = "Mimi config transformer"
    names = {f.name for f in fields(TransformerConfig)} - {"rope", "output_dimension"}
    fixed = {"causal": True, "gating": "none", "kv_repeat": 1}
    _check_keys(section, raw, names | set(fixed) | _TRANSFORMER_IGNORED_KEYS
                | {"positional_embedding", "output_dimensions", "conv_layout"})
    for key, allowed in fixed.items():
        _require(section, key, raw.pop(key, allowed), allowed)
    _require(section, "conv_layout", raw.pop("conv_layout", True), True)
    for unused in _TRANSFORMER_IGNORED_KEYS:
        raw.pop(unused, None)
    positional = raw.pop("positional_embedding", "rope")
    if positional not in ("rope", "none"):
        raise ModelLoadError(f"{section}: positional_embedding={positional!r} is not supported (rope or none)")
    outputs = list(raw.pop("output_dimensions", [latent_dim]))
    _require(section, "output_dimensions", outputs, [latent_dim])
    if "norm" in raw:
        raw["norm"] = NormKind(raw["norm"])
    config = TransformerConfig(rope=positional == "rope", output_dimension=outputs[0], **raw)
    _require(section, "input_dimension", config.input_dimension, latent_dim)
    if config.d_model % config.num_heads:
        raise ModelLoadError(f"{section}: d_model {config.d_model} is not a multiple of num_heads {config.num_heads}")
    return config
