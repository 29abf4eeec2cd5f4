"""The task sections of ``config.json`` as frozen typed configs: ``stt_config``, ``tts_config``, ``lm_gen_config``.

Parsed once, by :meth:`dsmcli.hub.checkpoint.Checkpoint.from_config`; the STT / TTS / bench bundles read these,
never the raw dicts. The defaults below are the reference's (FORMAT.md §1.2, §5.2, §6.4, §6.7) and are defined
here only. An unknown key is a :class:`~dsmcli.errors.ModelLoadError` naming it (a silently ignored key would
give a model that runs and behaves differently from the reference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from dsmcli.errors import ModelLoadError

# stt_config: the DSM STT script's defaults when a key is missing (FORMAT.md §5.2); the released models set both.
DEFAULT_AUDIO_DELAY_SECONDS = 5.0
DEFAULT_SILENCE_PREFIX_SECONDS = 1.0
# tts_config: TTSModel.from_checkpoint_info / make_condition_attributes (FORMAT.md §6.4, §6.7).
DEFAULT_SECOND_STREAM_AHEAD = 0
DEFAULT_MAX_SPEAKERS = 5


def _check_section(section: str, raw: Any, known: set[str], model: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ModelLoadError(f"{model}: config.json {section} is not an object")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ModelLoadError(f"{model}: config.json {section} has an unknown key {unknown[0]!r} "
                             f"(this dsmcli version knows {', '.join(sorted(known))})")
    return raw


def _number(section: str, key: str, value: Any, model: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ModelLoadError(f"{model}: config.json {section}.{key} must be a number >= {minimum:g}, got {value!r}")
    return value


def _integer(section: str, key: str, value: Any, model: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelLoadError(f"{model}: config.json {section}.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _flag(section: str, key: str, value: Any, model: str) -> bool:
    if not isinstance(value, bool):
        raise ModelLoadError(f"{model}: config.json {section}.{key} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class SttConfig:
    """``stt_config``: the text stream's delay behind the audio and the silence fed before it, in seconds."""

    audio_delay_seconds: float = DEFAULT_AUDIO_DELAY_SECONDS
    audio_silence_prefix_seconds: float = DEFAULT_SILENCE_PREFIX_SECONDS

    @classmethod
    def from_dict(cls, raw: Any, model: str = "model") -> SttConfig:
        section = "stt_config"
        raw = _check_section(section, raw, {f.name for f in fields(cls)}, model)
        return cls(**{key: _number(section, key, value, model) for key, value in raw.items()})


@dataclass(frozen=True)
class TtsConfig:
    """``tts_config``. ``audio_delay`` (seconds the audio lags the text) has no default in the reference (a TTS
    model without it fails to load, see :meth:`delay_steps`); ``multistream`` models are not supported."""

    audio_delay: float | None = None
    second_stream_ahead: int = DEFAULT_SECOND_STREAM_AHEAD
    multistream: bool = False
    max_speakers: int = DEFAULT_MAX_SPEAKERS

    @classmethod
    def from_dict(cls, raw: Any, model: str = "model") -> TtsConfig:
        section = "tts_config"
        raw = _check_section(section, raw, {f.name for f in fields(cls)}, model)
        config = cls(
            audio_delay=None if "audio_delay" not in raw else _number(section, "audio_delay", raw["audio_delay"], model),
            second_stream_ahead=_integer(section, "second_stream_ahead",
                                         raw.get("second_stream_ahead", DEFAULT_SECOND_STREAM_AHEAD), model),
            multistream=_flag(section, "multistream", raw.get("multistream", False), model),
            max_speakers=_integer(section, "max_speakers", raw.get("max_speakers", DEFAULT_MAX_SPEAKERS), model, 1),
        )
        if config.multistream:
            raise ModelLoadError(f"{model}: config.json tts_config.multistream: multistream TTS models are not "
                                 "supported")
        return config

    def delay_steps(self, frame_rate: float, model: str = "model") -> int:
        """Steps the audio streams lag the text: ``int(audio_delay * frame_rate)`` (16 for 1.28 s at 12.5 Hz)."""
        if self.audio_delay is None:
            raise ModelLoadError(f"{model}: config.json has no tts_config.audio_delay")
        return int(float(self.audio_delay) * float(frame_rate))


@dataclass(frozen=True)
class GenerationConfig:
    """``lm_gen_config``: the sampling defaults the checkpoint suggests to the reference's ``LMGen`` (whose
    constructor defaults these are). The released TTS configs spell the text temperature ``text_temp``."""

    use_sampling: bool = True
    temp: float = 0.8
    temp_text: float = 0.7
    top_k: int = 250
    top_k_text: int = 25
    cfg_coef: float = 1.0
    check: bool = False

    @classmethod
    def from_dict(cls, raw: Any, model: str = "model") -> GenerationConfig:
        section = "lm_gen_config"
        raw = dict(_check_section(section, raw, {f.name for f in fields(cls)} | {"text_temp"}, model))
        if "text_temp" in raw:
            if "temp_text" in raw:
                raise ModelLoadError(f"{model}: config.json {section} has both text_temp and temp_text")
            raw["temp_text"] = raw.pop("text_temp")
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key in ("use_sampling", "check"):
                values[key] = _flag(section, key, value, model)
            elif key in ("top_k", "top_k_text"):
                values[key] = _integer(section, key, value, model)
            else:
                values[key] = float(_number(section, key, value, model))
        return cls(**values)
