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

from dsmcli.codec import CodecOptions, Mimi
from dsmcli.constants import FRAME_RATE
from dsmcli.engine import LM, LMConfig
from dsmcli.errors import ModelLoadError
from dsmcli.hub.checkpoint import Checkpoint, load_checkpoint
from dsmcli.hub.loaders import load_lm, load_mimi, load_tokenizer
from dsmcli.hub.task_config import SttConfig
from dsmcli.kernels import KernelChoice

STT_MODEL_TYPE = "stt"
END_OF_TURN_HEAD = 2  # VAD head read by Kyutai's script and server (FORMAT.md §5.4)
END_OF_TURN_CLASS = 0


@dataclass(frozen=True)
class SttTiming:
    """Silence around the audio and the exact time offset of the text stream."""

    delay_seconds: Fraction  # text stream delay behind the audio
    prefix_frames: int  # silent frames before the audio
    suffix_frames: int  # silent frames after the audio, so the delayed text can catch up

    @classmethod
    def from_config(cls, config: SttConfig) -> "SttTiming":
        """The grid of a checkpoint's ``stt_config`` (exact: the decimal values as written, not binary floats)."""
        delay = Fraction(str(config.audio_delay_seconds))
        prefix = Fraction(str(config.audio_silence_prefix_seconds))
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
    kernels: KernelChoice = KernelChoice.AUTO  # the native CPU kernels: Mimi's and the LM's were loaded with it

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
             dtype: torch.dtype = torch.float32, quantize: str = "none",
             kernels: KernelChoice | str = KernelChoice.AUTO) -> "SttModel":
        """Load an STT checkpoint (registry name, Hub repo id or local dir); ``quantize`` (none, int8, int4)
        quantizes the LM while loading; ``kernels``: the native CPU kernels of everything it runs."""
        return cls.from_checkpoint(load_checkpoint(name_or_path), device, dtype, quantize, kernels)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, quantize: str = "none",
                        kernels: KernelChoice | str = KernelChoice.AUTO) -> "SttModel":
        """The bundle of a checkpoint already read: every file comes through :mod:`dsmcli.hub.loaders`."""
        if checkpoint.model_type != STT_MODEL_TYPE:
            raise ModelLoadError(f"{checkpoint.name} is a {checkpoint.model_type!r} model, not speech-to-text")
        if checkpoint.lm_config.dep_q != 0:
            raise ModelLoadError(f"{checkpoint.name}: a speech-to-text model generates no audio (dep_q must be 0)")
        kernels = KernelChoice(kernels)
        lm = load_lm(checkpoint, device=device, dtype=dtype, quantize=quantize, kernels=kernels)
        mimi = load_mimi(checkpoint, device=device, num_codebooks=lm.config.n_q, options=CodecOptions(kernels))
        return cls(checkpoint, mimi, lm, load_tokenizer(checkpoint), SttTiming.from_config(checkpoint.stt), kernels)
