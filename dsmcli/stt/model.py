"""The loaded speech-to-text model: Mimi + DSM LM + tokenizer + the time grid of its text delay.

FORMAT.md §5.2–5.3. Audio is fed as trained (the LM sees the codes of frame t−1 at step t, as the Rust
server does, so no audio frame is dropped) and a word's time is ``step / frame_rate − delay − prefix``
computed exactly, where ``prefix`` is the duration of the silence actually inserted before the audio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from dsmcli.codec import Mimi
from dsmcli.constants import FRAME_RATE
from dsmcli.engine import LM, LMConfig
from dsmcli.errors import ModelLoadError
from dsmcli.hub.files import Checkpoint, load_checkpoint

# Defaults the reference STT script uses when stt_config lacks a key (FORMAT.md §5.2).
DEFAULT_AUDIO_DELAY_SECONDS = 5.0
DEFAULT_SILENCE_PREFIX_SECONDS = 1.0
END_OF_TURN_HEAD = 2  # VAD head read by Kyutai's script and server (FORMAT.md §5.4)
END_OF_TURN_CLASS = 0


@dataclass(frozen=True)
class SttTiming:
    """Silence around the audio and the exact time offset of the text stream."""

    delay_seconds: Fraction  # text stream delay behind the audio
    prefix_frames: int  # silent frames before the audio
    suffix_frames: int  # silent frames after the audio, so the delayed text can catch up

    @classmethod
    def from_stt_config(cls, stt_config: dict[str, Any]) -> "SttTiming":
        delay = Fraction(str(stt_config.get("audio_delay_seconds", DEFAULT_AUDIO_DELAY_SECONDS)))
        prefix = Fraction(str(stt_config.get("audio_silence_prefix_seconds", DEFAULT_SILENCE_PREFIX_SECONDS)))
        if delay < 0 or prefix < 0:
            raise ModelLoadError(f"stt_config has a negative delay or prefix: {stt_config}")
        return cls(delay, math.ceil(prefix * FRAME_RATE), math.ceil(delay * FRAME_RATE))

    @property
    def time_offset(self) -> Fraction:
        """Seconds to subtract from ``step / frame_rate`` to get the time in the input audio."""
        return self.delay_seconds + Fraction(self.prefix_frames) / FRAME_RATE


@dataclass
class SttModel:
    """Everything a transcription needs, loaded once and shared by all batch slots."""

    checkpoint: Checkpoint
    mimi: Mimi
    lm: LM
    tokenizer: Any  # sentencepiece.SentencePieceProcessor
    timing: SttTiming

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def config(self) -> LMConfig:
        return self.lm.config

    @property
    def has_end_of_turn(self) -> bool:
        return self.config.extra_heads_num_heads > END_OF_TURN_HEAD

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_id())

    @classmethod
    def load(cls, name_or_path: str | Path, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, quantize: str = "none") -> "SttModel":
        """Load an STT checkpoint; ``quantize`` (none, int8, int4) quantizes the LM while loading."""
        checkpoint = load_checkpoint(name_or_path)
        if checkpoint.model_type != "stt":
            raise ModelLoadError(f"{checkpoint.name} is a {checkpoint.model_type!r} model, not speech-to-text")
        lm = LM.from_checkpoint(checkpoint, device=device, dtype=dtype, quantize=quantize)
        if lm.config.dep_q != 0:
            raise ModelLoadError(f"{checkpoint.name}: a speech-to-text model generates no audio (dep_q must be 0)")
        mimi = Mimi.load(name_or_path, device=device, num_codebooks=lm.config.n_q)
        return cls(checkpoint, mimi, lm, load_tokenizer(checkpoint.tokenizer_path),
                   SttTiming.from_stt_config(checkpoint.stt_config))


def load_tokenizer(path: Path) -> Any:
    import sentencepiece

    try:
        return sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise ModelLoadError(f"{path.name} is not a SentencePiece model: {exc}") from None
