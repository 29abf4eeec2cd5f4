"""Mimi neural audio codec: 24 kHz audio ↔ 12.5 Hz discrete codes, one-shot and streaming."""

from dsmcli.codec.config import (
    MimiConfig,
    PadMode,
    QuantizerConfig,
    SEANetConfig,
    TransformerConfig,
)
from dsmcli.codec.model import DecoderState, EncoderState, Mimi, MimiState
from dsmcli.codec.options import CodecOptions

__all__ = [
    "CodecOptions",
    "DecoderState",
    "EncoderState",
    "Mimi",
    "MimiConfig",
    "MimiState",
    "PadMode",
    "QuantizerConfig",
    "SEANetConfig",
    "TransformerConfig",
]
