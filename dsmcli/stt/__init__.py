"""Speech-to-text task: the loaded model (:mod:`dsmcli.stt.model`) and the per-stream session API
(:mod:`dsmcli.stt.session`, imported on its own: it pulls in the transcriber)."""

from dsmcli.stt.model import (
    DEFAULT_AUDIO_DELAY_SECONDS,
    DEFAULT_SILENCE_PREFIX_SECONDS,
    END_OF_TURN_CLASS,
    END_OF_TURN_HEAD,
    SttModel,
    SttTiming,
    load_tokenizer,
)

__all__ = [
    "DEFAULT_AUDIO_DELAY_SECONDS",
    "DEFAULT_SILENCE_PREFIX_SECONDS",
    "END_OF_TURN_CLASS",
    "END_OF_TURN_HEAD",
    "SttModel",
    "SttTiming",
    "load_tokenizer",
]
