"""The per-run choices of a transcription (``dsm transcribe`` flags, library calls, the server)."""

from __future__ import annotations

from dataclasses import dataclass

from dsmcli.errors import OptionError

DEFAULT_TEXT_TOP_K = 50  # lm_gen_config of the released STT models (used when temperature > 0)


@dataclass(frozen=True)
class TranscribeOptions:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = DEFAULT_TEXT_TOP_K
    vad: bool = False  # emit EndOfTurn events from the semantic VAD heads
    vad_threshold: float = 0.5
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise OptionError("temperature", f"must be >= 0, got {self.temperature}")
        if not 0 < self.vad_threshold < 1:
            raise OptionError("vad_threshold", f"must be between 0 and 1, got {self.vad_threshold}")
