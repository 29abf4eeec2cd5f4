"""What one timed step of each ``dsm bench`` path does, on a batch of ``B`` independent streams.

* ``stt``: every slot's next 80 ms frame through Mimi's streaming encoder (per slot, at batch 1, as
  ``Transcriber`` does so a transcript never depends on its batch mates), then one LM step on the codes of the
  previous frame, text tokens read back to the host. First output = the step whose text covers the first
  audio frame (silence prefix + text delay).
* ``tts``: the step of ``dsm speak`` (``Synthesizer._step``): one LM step with the depformer sampling every
  generated codebook (skipped during the audio delay, and codebooks still inside their own delay skipped), the
  audio-token hook that zeroes each codebook before its delay, then Mimi's streaming decoder on the time-aligned
  frame of the slots whose frame holds audio, PCM clipped and read back to the host as float32. First output =
  the first decoded audio frame (its time includes every step before it, Mimi decode included).
* ``codec-encode`` / ``codec-decode``: Mimi alone, streaming, batch ``B`` in one call.

Inputs are deterministic noise / random codes: with random weights nothing else makes sense, and the cost of a
step does not depend on them. Text-stream state machines, tokenizers and word assembly are not timed (they
are host-side bookkeeping, small next to a step).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Protocol

import torch
from torch import Tensor

from dsmcli.bench.models import BenchModel, ModelKind
from dsmcli.constants import FRAME_RATE
from dsmcli.engine import (
    ConditionerKind,
    ConditionInputs,
    LMStream,
    SamplingOptions,
    TensorCondition,
)
from dsmcli.engine.config import ZERO_TOKEN_ID
from dsmcli.tts.model import (
    AUDIO_TOP_K,
    CFG_CONDITION,
    DEFAULT_CFG,
    DEFAULT_TEMPERATURE,
    TEXT_TOP_K,
)
from dsmcli.engine.stream import StepHooks, StepInfo
from dsmcli.tts.synthesizer import CLIP

NOISE_LEVEL = 0.1  # amplitude of the noise fed to the encoder
VOICE_SECONDS = 10  # length of one voice embedding (FORMAT.md §6.7): 125 frames at 12.5 Hz


class BenchPath(str, Enum):
    STT = "stt"
    TTS = "tts"
    CODEC_ENCODE = "codec-encode"
    CODEC_DECODE = "codec-decode"

    @property
    def needs(self) -> ModelKind | None:
        """The model kind the path needs (None: any)."""
        return {BenchPath.STT: ModelKind.STT, BenchPath.TTS: ModelKind.TTS}.get(self)


CODEC_PATHS = (BenchPath.CODEC_ENCODE, BenchPath.CODEC_DECODE)


def default_paths(kind: ModelKind) -> tuple[BenchPath, ...]:
    return ((BenchPath.STT,) if kind is ModelKind.STT else (BenchPath.TTS,)) + CODEC_PATHS


class PathRunner(Protocol):
    """``start()`` opens fresh streams for the batch; ``step()`` runs one 80 ms step (returns when its results
    are on the host); after ``first_output_steps`` steps of a fresh stream the first word / audio is out."""

    first_output_steps: int

    def start(self) -> None: ...

    def step(self) -> None: ...


def _noise_frames(model: BenchModel, batch: int, seed: int) -> Tensor:
    """``[B, channels, frame_size]`` of deterministic noise on the model's device."""
    generator = torch.Generator().manual_seed(seed)
    noise = NOISE_LEVEL * torch.randn(batch, model.mimi.channels, model.mimi.frame_size, generator=generator)
    return noise.to(model.lm.device)


def _random_codes(model: BenchModel, batch: int, seed: int) -> Tensor:
    """``[B, K, 1]`` codes for the ``K`` codebooks Mimi uses."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, model.mimi.cardinality, (batch, model.mimi.num_codebooks, 1), generator=generator)
    return codes.to(model.lm.device)


class SttRunner:
    def __init__(self, model: BenchModel, batch: int, seed: int):
        self.model, self.batch = model, batch
        self.stream = LMStream(model.lm, SamplingOptions.greedy())
        self.frames = _noise_frames(model, batch, seed)
        offset = model.stt_timing.time_offset
        self.first_output_steps = math.ceil(offset * FRAME_RATE) + 1

    def start(self) -> None:
        self.state = self.stream.init_state(self.batch)
        self.mimi_states = [self.model.mimi.init_state(1) for _ in range(self.batch)]
        codes = torch.zeros(self.batch, self.model.lm.config.n_q, 1, dtype=torch.long, device=self.model.lm.device)
        self.previous, self.current = codes, codes.clone()

    def step(self) -> None:
        for slot, mimi_state in enumerate(self.mimi_states):
            self.current[slot] = self.model.mimi.encode_step(self.frames[slot : slot + 1], mimi_state)[0]
        out = self.stream.step(self.previous, self.state)
        self.previous, self.current = self.current, self.previous
        out.text_tokens.tolist()


def _tts_sampling(model: BenchModel) -> SamplingOptions:
    """The ``dsm speak`` defaults: distilled CFG through the LUT when the model has one, else real CFG."""
    distilled = model.lm.config.conditioner(CFG_CONDITION) is not None
    return SamplingOptions(temp=DEFAULT_TEMPERATURE, top_k=AUDIO_TOP_K, text_temp=DEFAULT_TEMPERATURE,
                           text_top_k=TEXT_TOP_K, cfg_coef=1.0 if distilled else DEFAULT_CFG)


def tts_condition(model: BenchModel, batch: int, seed: int) -> ConditionInputs | None:
    """Conditions like one voice per slot: LUT values set, tensor conditions = one random 10 s voice in the first
    of ``max_speakers`` slots (the rest padding)."""
    config = model.lm.config
    if not config.conditioners:
        return None
    generator = torch.Generator().manual_seed(seed)
    frames = int(VOICE_SECONDS * model.frame_rate)
    speakers = model.checkpoint.tts.max_speakers
    values, tensors = {}, {}
    for conditioner in config.conditioners:
        if conditioner.kind is ConditionerKind.LUT:
            values[conditioner.name] = [conditioner.possible_values[0]] * batch
            continue
        voice = torch.randn(batch, speakers * frames, conditioner.dim, generator=generator)
        mask = torch.zeros(batch, speakers * frames, dtype=torch.bool)
        mask[:, :frames] = True
        tensors[conditioner.name] = TensorCondition(voice.to(model.lm.device), mask.to(model.lm.device))
    return ConditionInputs(values, tensors)


class TtsRunner:
    def __init__(self, model: BenchModel, batch: int, seed: int):
        config, device = model.lm.config, model.lm.device
        self.model, self.batch = model, batch
        generator = torch.Generator(device=device).manual_seed(seed)
        self.stream = LMStream(model.lm, _tts_sampling(model), hooks=StepHooks(audio_tokens=self._on_audio),
                               cfg_no_text=True, num_generated=config.dep_q, generator=generator)
        self.condition = tts_condition(model, batch, seed)
        self.delay_steps = model.tts_delay_steps
        delays = torch.tensor(config.delays[1 : config.dep_q + 1], dtype=torch.long, device=device)
        self.audio_start = delays + self.delay_steps  # [G] first step whose audio token is real
        self.skip_audio = torch.full((batch, config.dep_q), ZERO_TOKEN_ID, dtype=torch.long, device=device)
        self.first_output_steps = self.delay_steps + config.max_delay + 1

    def _on_audio(self, audio: Tensor, info: StepInfo) -> Tensor:
        """``Synthesizer._on_audio`` without an audio prefix: each codebook is zero before its delay."""
        return torch.where(info.offsets[:, None] < self.audio_start, ZERO_TOKEN_ID, audio)

    def start(self) -> None:
        self.state = self.stream.init_state(self.batch, self.condition)
        self.mimi_state = self.model.mimi.init_state(self.batch)

    def step(self) -> None:
        """``Synthesizer._step`` and ``_decode`` for a batch of slots that are all ready."""
        offsets = self.state.offsets
        early = bool((offsets < self.delay_steps).all())
        reached = (self.audio_start <= offsets.max()).nonzero()  # as Synthesizer._audio_needed
        needed = int(reached.max()) + 1 if reached.numel() else 0
        out = self.stream.step(None, self.state, replace_audio=self.skip_audio if early else None,
                               audio_needed=needed)
        times = self.state.offsets - 1 - self.model.lm.config.max_delay  # [B] time of the frame just completed
        decode = out.frame_valid & (times >= self.delay_steps)
        if bool(decode.any()):
            codes = out.frame[:, 1:, None].clamp(min=0)
            active = None if bool(decode.all()) else decode
            pcm = self.model.mimi.decode_step(codes, self.mimi_state, active=active)
            pcm[:, 0].clamp(-CLIP, CLIP).float().cpu().numpy()
        out.text_tokens.tolist()


class CodecRunner:
    first_output_steps = 1

    def __init__(self, model: BenchModel, batch: int, seed: int, encode: bool):
        self.model, self.batch, self.encode = model, batch, encode
        self.frames = _noise_frames(model, batch, seed)
        self.codes = _random_codes(model, batch, seed)

    def start(self) -> None:
        self.state = self.model.mimi.init_state(self.batch)

    def step(self) -> None:
        if self.encode:
            self.model.mimi.encode_step(self.frames, self.state).cpu()
        else:
            self.model.mimi.decode_step(self.codes, self.state).cpu()


def make_runner(path: BenchPath, model: BenchModel, batch: int, seed: int) -> PathRunner:
    if path is BenchPath.STT:
        return SttRunner(model, batch, seed)
    if path is BenchPath.TTS:
        return TtsRunner(model, batch, seed)
    return CodecRunner(model, batch, seed, encode=path is BenchPath.CODEC_ENCODE)
