"""The loaded text-to-speech model (FORMAT.md §6).

:class:`TtsModel` bundles what a synthesis needs, loaded once and shared by every batch slot: the DSM LM, Mimi,
the SentencePiece tokenizer, the text-stream token ids, how the model takes voices, and the text/audio delay.
The per-run choices are :class:`~dsmcli.tts.options.SpeakOptions` (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from dsmcli.codec import CodecOptions, Mimi
from dsmcli.engine import LM, LMConfig, SamplingOptions
from dsmcli.engine.config import DISTILLED_CFG_CONDITION as CFG_CONDITION
from dsmcli.engine.config import ConditionerKind
from dsmcli.errors import ModelLoadError, OptionError
from dsmcli.hub.checkpoint import Checkpoint, load_checkpoint
from dsmcli.hub.loaders import load_lm, load_mimi, load_tokenizer
from dsmcli.kernels import KernelChoice
from dsmcli.tts.options import (  # noqa: F401 - re-exported: SpeakOptions and the sampling defaults
    AUDIO_TOP_K,
    DEFAULT_CFG,
    DEFAULT_TEMPERATURE,
    TEXT_TOP_K,
    SpeakOptions,
)
from dsmcli.tts.script import Entry, EntryStream, script_to_entries
from dsmcli.tts.state_machine import TextStreamConfig
from dsmcli.tts.tokens import TtsTokenIds
from dsmcli.tts.voices import VoiceSetup

TTS_MODEL_TYPE = "tts"
# The reference scripts' default voice for tts-1.6b-en_fr (a path in kyutai/tts-voices).
DEFAULT_VOICE = "expresso/ex03-ex01_happy_001_channel1_334s.wav"
# LUT conditions the reference sets: control = "ok" always, cfg = the distilled coefficient.
CONTROL_CONDITION, CONTROL_VALUE = "control", "ok"
CFG_FORMAT = ".1f"  # how the reference turns the coefficient into a LUT value


@dataclass
class TtsModel:
    """Everything a synthesis needs, loaded once.

    ``n_q``: audio codebooks generated (the first ``n_q`` of the model's; the others are fed -1);
    ``delay_steps``: steps the audio streams lag the text (``int(audio_delay * frame_rate)``, 16 for 1.28 s).
    """

    checkpoint: Checkpoint
    lm: LM
    mimi: Mimi
    tokenizer: Any  # sentencepiece.SentencePieceProcessor
    token_ids: TtsTokenIds
    voices: VoiceSetup
    delay_steps: int
    n_q: int
    kernels: KernelChoice = KernelChoice.AUTO  # the native CPU kernels: Mimi's and the LM's were loaded with it

    @classmethod
    def load(cls, name_or_path: str | Path, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, n_q: int | None = None,
             voice_repo: str | Path | None = None, quantize: str = "none",
             kernels: KernelChoice | str = KernelChoice.AUTO) -> TtsModel:
        """Load a TTS checkpoint (registry name, Hub repo id or local dir); ``quantize`` (none, int8, int4)
        quantizes the LM while loading; ``kernels``: the native CPU kernels of everything it runs. Raises
        ModelLoadError / UsageError."""
        checkpoint = load_checkpoint(name_or_path)
        return cls.from_checkpoint(checkpoint, checked_voice_setup(checkpoint, voice_repo), device=device,
                                   dtype=dtype, n_q=n_q, quantize=quantize, kernels=kernels)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, voices: VoiceSetup, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, n_q: int | None = None,
                        quantize: str = "none", kernels: KernelChoice | str = KernelChoice.AUTO) -> TtsModel:
        """The bundle of a checkpoint already read and checked (:func:`checked_voice_setup` gave ``voices``):
        every file comes through :mod:`dsmcli.hub.loaders`, the configs are the checkpoint's parsed ones."""
        codebooks = codebooks_to_generate(checkpoint.lm_config, n_q, voices)
        kernels = KernelChoice(kernels)
        mimi = load_mimi(checkpoint, device=device, num_codebooks=codebooks, options=CodecOptions(kernels))
        if not voices.encodes_audio:
            mimi.drop_encoder()
        # the LM after Mimi: the peak of the LM's load (one float weight at a time when quantizing) then sits on
        # the decode-only Mimi, not on the whole one
        lm = load_lm(checkpoint, device=device, dtype=dtype, quantize=quantize, kernels=kernels)
        delay_steps = checkpoint.tts.delay_steps(mimi.frame_rate, checkpoint.name)
        token_ids = TtsTokenIds.from_lm_config(lm.config)
        return cls(checkpoint, lm, mimi, load_tokenizer(checkpoint), token_ids, voices, delay_steps, codebooks,
                   kernels)

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def config(self) -> LMConfig:
        return self.lm.config

    @property
    def frame_rate(self) -> Fraction:
        return self.mimi.frame_rate

    @property
    def cfg_values(self) -> tuple[str, ...]:
        """Values of the distilled-CFG LUT (empty: the model uses real CFG)."""
        return self.config.distilled_cfg_values

    @property
    def second_stream_ahead(self) -> int:
        return self.checkpoint.tts.second_stream_ahead

    def text_stream_config(self, options: SpeakOptions) -> TextStreamConfig:
        return TextStreamConfig(self.token_ids, self.second_stream_ahead, max_padding=options.max_padding,
                                initial_padding=options.initial_padding)

    def cfg_value(self, options: SpeakOptions) -> str | None:
        """The ``cfg`` LUT value of a distilled model (None for real-CFG models). Raises UsageError."""
        return cfg_lut_value(self.config, options.cfg, self.name)

    def sampling(self, options: SpeakOptions) -> SamplingOptions:
        """Sampling for text and audio at the same temperature; real CFG only for models without a cfg LUT."""
        real_cfg = 1.0 if self.cfg_values else (DEFAULT_CFG if options.cfg is None else options.cfg)
        return SamplingOptions(temp=options.temperature, top_k=options.audio_top_k, text_temp=options.temperature,
                               text_top_k=options.text_top_k, cfg_coef=real_cfg)

    def lut_values(self, cfg_value: str | None) -> dict[str, list[str | None]]:
        """One slot's LUT conditions: ``control`` = "ok", ``cfg`` = the distilled value, others unset."""
        values: dict[str, list[str | None]] = {}
        for conditioner in self.config.conditioners:
            if conditioner.kind is not ConditionerKind.LUT:
                continue
            value = {CONTROL_CONDITION: CONTROL_VALUE, CFG_CONDITION: cfg_value}.get(conditioner.name)
            values[conditioner.name] = [value]
        return values

    def entries(self, turns: list[str] | tuple[str, ...], options: SpeakOptions) -> list[Entry]:
        """Entries of a whole script (turns alternate MAIN / OTHER)."""
        return script_to_entries(self.tokenizer, self.token_ids, list(turns), multi_speaker=self.voices.multi_speaker,
                                 padding_between=options.padding_between, frame_rate=self.frame_rate)

    def entry_stream(self, options: SpeakOptions) -> EntryStream:
        """Entries of a monologue arriving in pieces (same entries as :meth:`entries` on the whole text)."""
        return EntryStream(self.tokenizer, self.token_ids, multi_speaker=self.voices.multi_speaker,
                           padding_between=options.padding_between, frame_rate=self.frame_rate)


def cfg_lut_value(config: LMConfig, cfg: float | None, model_name: str) -> str | None:
    """``cfg`` as the distilled-CFG LUT value ("2.0"), None for a model without one. OptionError if not a value."""
    values = config.distilled_cfg_values
    if not values:
        return None
    value = format(DEFAULT_CFG if cfg is None else cfg, CFG_FORMAT)
    if value not in values or (cfg is not None and float(value) != cfg):
        raise OptionError("cfg", f"{cfg}: {model_name} was distilled with CFG and takes one of {', '.join(values)}")
    return value


def checked_voice_setup(checkpoint: Checkpoint, voice_repo: str | Path | None) -> VoiceSetup:
    """The voice setup of a TTS checkpoint; ModelLoadError when the checkpoint is not a TTS model."""
    if checkpoint.model_type != TTS_MODEL_TYPE:
        raise ModelLoadError(f"{checkpoint.name} is a {checkpoint.model_type!r} model, not text-to-speech")
    return VoiceSetup.from_checkpoint(checkpoint, voice_repo)


def codebooks_to_generate(config: LMConfig, n_q: int | None, voices: VoiceSetup) -> int:
    """Codebooks to generate: all by default; fewer only for embedding models (a prefix has all of them)."""
    if config.dep_q == 0:
        raise ModelLoadError("a text-to-speech model must generate audio (dep_q > 0)")
    if n_q is None:
        return config.dep_q
    if not 1 <= n_q <= config.dep_q:
        raise OptionError("n_q", f"must be within 1..{config.dep_q} for this model, got {n_q}")
    if voices.encodes_audio and n_q != config.dep_q:
        raise OptionError("n_q", f"{n_q}: this model conditions on an audio prefix and needs all {config.dep_q} "
                          "codebooks")
    return n_q
