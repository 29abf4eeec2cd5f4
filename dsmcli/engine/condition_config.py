"""Parsing helpers of :mod:`dsmcli.engine.config`, and the conditioning part of the config (FORMAT.md §1.3, §3.6).

``conditioners`` entries become :class:`ConditionerConfig` (``lut`` or ``tensor``); ``fuser`` becomes
:class:`FuserConfig` (only ``sum`` and ``cross``, as the reference). Unknown keys raise ``ModelLoadError``;
``init_scale`` and ``pad_empty`` only matter for training / empty conditions and are accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from dsmcli.errors import ModelLoadError


class ConditionerKind(str, Enum):
    LUT = "lut"  # a string value from a fixed list -> table row
    TENSOR = "tensor"  # a [B, S, dim] tensor with a [B, S] mask


def config_error(key: str, why: str) -> ModelLoadError:
    """The error for a config.json key the engine cannot use."""
    return ModelLoadError(f"config.json: {key}: {why}")


def parse_enum(cls: type[Enum], key: str, value: Any) -> Any:
    """``cls(value)``, or a ModelLoadError listing the supported values."""
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in cls)  # type: ignore[attr-defined]
        raise config_error(key, f"unsupported value {value!r} (supported: {allowed})") from None


def require(raw: Mapping[str, Any], key: str) -> Any:
    if key not in raw:
        raise config_error(key, "missing")
    return raw[key]


def int_tuple(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
        raise config_error(key, f"expected a list of integers, got {value!r}")
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class ConditionerConfig:
    """One entry of ``conditioners`` (FORMAT.md §3.6)."""

    name: str
    kind: ConditionerKind
    dim: int  # input feature size (LUT table width / tensor feature size)
    possible_values: tuple[str, ...] = ()  # LUT only: value -> row index
    n_bins: int = 0  # LUT only: rows = n_bins + 1 (the last is padding)
    projection: bool = True  # output_proj present (force_linear or dim != LM dim)
    learn_padding: bool = True


@dataclass(frozen=True)
class FuserConfig:
    """How conditions reach the LM: ``sum`` ones are added to every input, ``cross`` ones feed cross-attention."""

    sum: tuple[str, ...]
    cross: tuple[str, ...]
    cross_pos_emb: bool
    cross_pos_emb_scale: float


_LUT_KEYS = frozenset({"n_bins", "dim", "tokenizer", "possible_values", "init_scale", "force_linear",
                       "pad_empty", "output_bias", "learn_padding"})
_TENSOR_KEYS = frozenset({"dim", "force_linear", "pad_empty", "output_bias", "learn_padding"})


def conditioner_from(name: str, raw: Any, lm_dim: int) -> ConditionerConfig:
    where = f"conditioners.{name}"
    if not isinstance(raw, Mapping) or "type" not in raw:
        raise config_error(where, "expected an object with a 'type'")
    kind = parse_enum(ConditionerKind, f"{where}.type", raw["type"])
    body = raw.get(kind.value, {})
    allowed = _LUT_KEYS if kind is ConditionerKind.LUT else _TENSOR_KEYS
    for k in body:
        if k not in allowed:
            raise config_error(f"{where}.{kind.value}.{k}", "unknown key")
    if body.get("output_bias", False):
        raise config_error(f"{where}.output_bias", "biased condition projections are not supported")
    dim = int(require(body, "dim"))
    values: tuple[str, ...] = ()
    n_bins = 0
    if kind is ConditionerKind.LUT:
        if body.get("tokenizer", "noop") != "noop":
            raise config_error(f"{where}.tokenizer", f"unsupported tokenizer {body.get('tokenizer')!r}")
        if body.get("possible_values") is None:
            raise config_error(f"{where}.possible_values", "LUT conditioners need their list of values")
        values = tuple(str(v) for v in body["possible_values"])
        n_bins = int(require(body, "n_bins"))
        if n_bins < len(values):
            raise config_error(f"{where}.n_bins", f"{n_bins} bins for {len(values)} values")
    return ConditionerConfig(
        name=name, kind=kind, dim=dim, possible_values=values, n_bins=n_bins,
        projection=bool(body.get("force_linear", True)) or dim != lm_dim,
        learn_padding=bool(body.get("learn_padding", True)),
    )


def fuser_from(raw: Any, names: set[str]) -> FuserConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise config_error("fuser", f"expected an object, got {raw!r}")
    for k in raw:
        if k not in ("sum", "cross", "prepend", "cross_attention_pos_emb", "cross_attention_pos_emb_scale"):
            raise config_error(f"fuser.{k}", "unknown key")
    if raw.get("prepend"):
        raise config_error("fuser.prepend", "prepended conditions are not supported")
    sums, cross = tuple(raw.get("sum", ())), tuple(raw.get("cross", ()))
    for name in sums + cross:
        if name not in names:
            raise config_error("fuser", f"condition {name!r} has no conditioner")
    return FuserConfig(sum=sums, cross=cross, cross_pos_emb=bool(raw.get("cross_attention_pos_emb", False)),
                       cross_pos_emb_scale=float(raw.get("cross_attention_pos_emb_scale", 1.0)))
