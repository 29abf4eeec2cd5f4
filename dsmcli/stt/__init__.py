"""Speech-to-text task: the loaded model (:mod:`dsmcli.stt.model`) and the per-stream session API
(:mod:`dsmcli.stt.session`, imported on its own: it pulls in the transcriber)."""

from dsmcli.stt.model import (
    END_OF_TURN_CLASS,
    END_OF_TURN_HEAD,
    SttModel,
    SttTiming,
)

__all__ = [
    "END_OF_TURN_CLASS",
    "END_OF_TURN_HEAD",
    "SttModel",
    "SttTiming",
]
