"""The loaded text-to-speech model and the per-run options of ``dsm speak`` (FORMAT.md §6).

:class:`TtsModel` bundles what a synthesis needs, loaded once and shared by every batch slot: the DSM LM, Mimi,
the SentencePiece tokenizer, the text-stream token ids, how the model takes voices, and the text/audio delay.
:class:`SpeakOptions` holds the per-run choices (temperature, CFG, padding) with the reference defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from dsmcli.codec import Mimi
from dsmcli.engine import LM, LMConfig, SamplingOptions
from dsmcli.engine.config import ConditionerKind
from dsmcli.errors import ModelLoadError, UsageError
from dsmcli.hub.files import Checkpoint, load_checkpoint
from dsmcli.stt import load_tokenizer
from dsmcli.tts.script import (
    DEFAULT_PADDING_BETWEEN,
    Entry,
    EntryStream,
    script_to_entries,
)
from dsmcli.tts.state_machine import (
    DEFAULT_INITIAL_PADDING,
    DEFAULT_MAX_PADDING,
    TextStreamConfig,
)
from dsmcli.tts.tokens import TtsTokenIds
from dsmcli.tts.voices import VoiceKind, VoiceSetup

TTS_MODEL_TYPE = "tts"
# Reference defaults (TTSModel fields and the DSM scripts, FORMAT.md §4 and §6.4).
DEFAULT_TEMPERATURE = 0.6
TEXT_TOP_K = 25  # LMGen top_k_text
AUDIO_TOP_K = 250  # LMGen top_k
DEFAULT_CFG = 2.0  # distilled LUT value ("2.0") for tts-1.6b, real coefficient for tts-0.75b
FINAL_PADDING = 4  # steps generated past the end of the text, after the audio delay
MAX_GEN_STEPS = 30000  # TTSModel.max_gen_length
# The reference scripts' default voice for tts-1.6b-en_fr (a path in kyutai/tts-voices).
DEFAULT_VOICE = "expresso/ex03-ex01_happy_001_channel1_334s.wav"
# LUT conditions the reference sets: control = "ok" always, cfg = the distilled coefficient.
CONTROL_CONDITION, CONTROL_VALUE = "control", "ok"
CFG_CONDITION = "cfg"
CFG_FORMAT = ".1f"  # how the reference turns the coefficient into a LUT value


@dataclass(frozen=True)
class SpeakOptions:
    """Per-run synthesis choices.

    ``cfg``: None = the model's default (2.0); for a model distilled with CFG (a ``cfg`` LUT) it must be one of the
    LUT values, otherwise it is the real guidance coefficient (1 = no guidance). ``padding_bonus`` is added to the
    PAD logit (positive = slower speech). ``max_steps`` bounds each input's generation.
    """

    temperature: float = DEFAULT_TEMPERATURE
    cfg: float | None = None
    padding_bonus: float = 0.0
    seed: int | None = None
    max_padding: int = DEFAULT_MAX_PADDING
    initial_padding: int = DEFAULT_INITIAL_PADDING
    padding_between: int = DEFAULT_PADDING_BETWEEN
    final_padding: int = FINAL_PADDING
    max_steps: int = MAX_GEN_STEPS
    text_top_k: int = TEXT_TOP_K
    audio_top_k: int = AUDIO_TOP_K

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UsageError(f"--temperature must be a number >= 0, got {self.temperature}")
        if self.cfg is not None and not (math.isfinite(self.cfg) and self.cfg > 0):
            raise UsageError(f"--cfg must be a number > 0, got {self.cfg}")
        if not math.isfinite(self.padding_bonus):
            raise UsageError(f"--padding-bonus must be a finite number, got {self.padding_bonus}")
        if self.max_padding < 1:
            raise UsageError(f"--max-padding must be >= 1, got {self.max_padding}")
        if min(self.initial_padding, self.padding_between, self.final_padding) < 0 or self.max_steps < 1:
            raise UsageError(f"invalid padding / step limits in {self}")


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

    @classmethod
    def load(cls, name_or_path: str | Path, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, n_q: int | None = None,
             voice_repo: str | Path | None = None, quantize: str = "none") -> TtsModel:
        """Load a TTS checkpoint (registry name, Hub repo id or local dir); ``quantize`` (none, int8, int4)
        quantizes the LM while loading. Raises ModelLoadError / UsageError."""
        checkpoint = load_checkpoint(name_or_path)
        voices = checked_voice_setup(checkpoint, voice_repo)
        lm = LM.from_checkpoint(checkpoint, device=device, dtype=dtype, quantize=quantize)
        codebooks = codebooks_to_generate(lm.config, n_q, voices)
        mimi = Mimi.load(name_or_path, device=device, num_codebooks=codebooks)
        if voices.kind is not VoiceKind.AUDIO_PREFIX:
            mimi.drop_encoder()  # embedding voices never encode audio: free ~half of Mimi
        if "audio_delay" not in checkpoint.tts_config:
            raise ModelLoadError(f"{checkpoint.name}: config.json has no tts_config.audio_delay")
        delay_steps = int(float(checkpoint.tts_config["audio_delay"]) * float(mimi.frame_rate))
        token_ids = TtsTokenIds.from_lm_kwargs(checkpoint.lm_kwargs)
        return cls(checkpoint, lm, mimi, load_tokenizer(checkpoint.tokenizer_path), token_ids, voices,
                   delay_steps, codebooks)

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
    def uses_prefix(self) -> bool:
        """True for audio-prefix models (tts-0.75b): the voice is Mimi codes fed before the text."""
        return self.voices.kind is VoiceKind.AUDIO_PREFIX

    @property
    def cfg_values(self) -> tuple[str, ...]:
        """Values of the distilled-CFG LUT (empty: the model uses real CFG)."""
        conditioner = self.config.conditioner(CFG_CONDITION)
        return () if conditioner is None else conditioner.possible_values

    @property
    def second_stream_ahead(self) -> int:
        return int(self.checkpoint.tts_config.get("second_stream_ahead", 0))

    def text_stream_config(self, options: SpeakOptions) -> TextStreamConfig:
        return TextStreamConfig.from_config(self.token_ids, self.checkpoint.tts_config,
                                            max_padding=options.max_padding, initial_padding=options.initial_padding)

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
    """``--cfg`` as the distilled-CFG LUT value ("2.0"), None for a model without one. UsageError if not a value."""
    conditioner = config.conditioner(CFG_CONDITION)
    if conditioner is None:
        return None
    value = format(DEFAULT_CFG if cfg is None else cfg, CFG_FORMAT)
    if value not in conditioner.possible_values or (cfg is not None and float(value) != cfg):
        raise UsageError(f"--cfg {cfg}: {model_name} was distilled with CFG and takes one of "
                         f"{', '.join(conditioner.possible_values)}")
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
        raise UsageError(f"--n-q must be within 1..{config.dep_q} for this model, got {n_q}")
    if voices.kind is VoiceKind.AUDIO_PREFIX and n_q != config.dep_q:
        raise UsageError(f"--n-q: this model conditions on an audio prefix and needs all {config.dep_q} codebooks")
    return n_q
