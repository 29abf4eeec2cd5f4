"""What one timed step of each ``dsm bench`` path does, on a batch of ``B`` independent streams.

* ``stt``: the step ``dsm transcribe`` runs (:class:`~dsmcli.stt.batch.SttBatch`, driven by the same
  :class:`~dsmcli.engine.scheduler.SlotScheduler`): every slot's next 80 ms frame through Mimi's streaming
  encoder (per slot, at batch 1), one LM step on the codes of the previous frame, the values read back to the
  host and turned into words. First output = the step whose text covers the first audio frame (silence prefix +
  text delay).
* ``tts``: the step ``dsm speak`` runs (:class:`~dsmcli.tts.batch.TtsBatch`, same scheduler) with a voice made
  (its cross-attention source projected) once when the runner is built, as a server's or a ``dsm speak`` run's
  voices are: that projection is timed apart (``voice_projection_ms``); then the text-stream
  state machine, one LM step with the depformer sampling every generated codebook (skipped during the audio
  delay, and codebooks still inside their own delay skipped), the audio-token hook, then Mimi's streaming
  decoder on the time-aligned frame of the slots whose frame holds audio, PCM clipped and read back to the host
  as float32. First output = the first decoded audio frame (its time includes every step before it).
* ``codec-encode`` / ``codec-decode``: Mimi alone, streaming, batch ``B`` in one call.

The streams never end: the audio is deterministic noise (one frame repeated), the text one word repeated, the
voice a random 10 s embedding (with random weights nothing else makes sense, and the cost of a step does not
depend on them). Without a tokenizer file (random weights of a registry name) words are decoded by a stand-in
that names each token. A fresh stream (``start``) is admitted at the next step, as a command's input is.
"""

from __future__ import annotations

import itertools
import math
import time
from enum import Enum
from typing import Any, Protocol

import torch
from torch import Tensor

from dsmcli.bench.models import BenchModel, ModelKind
from dsmcli.constants import FRAME_RATE
from dsmcli.engine import ConditionerKind, ConditionInputs, TensorCondition
from dsmcli.engine.scheduler import SlotScheduler, SlotStream
from dsmcli.hub.loaders import load_tokenizer
from dsmcli.stt import SttModel
from dsmcli.stt.batch import SttBatch
from dsmcli.stt.options import TranscribeOptions
from dsmcli.stt.transcriber import AudioStream
from dsmcli.stt.words import WORD_START_MARK
from dsmcli.tts.batch import TtsBatch, TtsStream
from dsmcli.tts.model import SpeakOptions, TtsModel
from dsmcli.tts.script import Entry
from dsmcli.tts.slot_voice import SlotVoice
from dsmcli.tts.text_feed import EntryFeed
from dsmcli.tts.tokens import TtsTokenIds
from dsmcli.tts.voices import VoiceSetup

NOISE_LEVEL = 0.1  # amplitude of the noise fed to the encoder
VOICE_SECONDS = 10  # length of one voice embedding (FORMAT.md §6.7): 125 frames at 12.5 Hz
FIRST_WORDS = 8  # words a bench text stream holds before its first step (one more comes per step)


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
    are on the host); after ``first_output_steps`` steps of a fresh stream the first word / audio is out;
    ``voice_projection_ms``: the tts path's voice made once, before its streams (None on the other paths)."""

    first_output_steps: int
    voice_projection_ms: float | None

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


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a host timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _discard(event: object) -> None:
    """Bench streams' events are produced (as a command's are) and dropped."""


class _StandInTokenizer:
    """Word assembly's tokenizer calls, for random weights without a SentencePiece file: token ``i`` is the word
    ``t<i>`` (every token starts a word)."""

    def encode(self, text: str) -> list[int]:
        return [0] * len(text.split())

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"t{i}" for i in ids)

    def id_to_piece(self, id: int) -> str:
        return f"{WORD_START_MARK}t{id}"

    def eos_id(self) -> int:
        return -1


def _tokenizer(model: BenchModel) -> Any:
    if model.random_weights:
        return _StandInTokenizer()
    return load_tokenizer(model.checkpoint.tokenizer_path)


class _Runner:
    """Endless streams on every slot of a task batch, stepped by the commands' scheduler."""

    first_output_steps: int
    voice_projection_ms: float | None = None

    def __init__(self, batch: Any, batch_size: int) -> None:
        self.batch, self.batch_size = batch, batch_size
        self.stream = batch.stream  # the LMStream the step runs (profilers wrap its methods)
        self.scheduler = SlotScheduler(batch, max_waiting=None, name="dsm-bench")
        self.streams: list[SlotStream] = []

    def new_stream(self, index: int) -> SlotStream:
        raise NotImplementedError

    def start(self) -> None:
        """Close the running streams and open fresh ones: they take the slots at the next step."""
        for stream in self.streams:
            stream.close()
        self.streams = [self.new_stream(index) for index in range(self.batch_size)]
        for stream in self.streams:
            self.scheduler.open(stream)

    def step(self) -> None:
        self.scheduler.run_once()


class SttRunner(_Runner):
    def __init__(self, model: BenchModel, batch: int, seed: int):
        stt = SttModel(model.checkpoint, model.mimi, model.lm, _tokenizer(model), model.stt_timing, model.kernels)
        super().__init__(SttBatch(stt, TranscribeOptions(), batch), batch)
        self.model = model
        self.frames = _noise_frames(model, batch, seed)[:, 0].cpu().numpy()  # [B, FRAME_SIZE]
        self.first_output_steps = math.ceil(stt.timing.time_offset * FRAME_RATE) + 1

    def new_stream(self, index: int) -> SlotStream:
        frame = self.frames[index]
        return AudioStream(lambda: itertools.repeat(frame), deliver=_discard)


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


def tts_model(model: BenchModel) -> TtsModel:
    """The bench model as the TTS task takes it (no tokenizer: the bench text is token ids)."""
    config = model.lm.config
    ids = TtsTokenIds.from_lm_config(config)
    voices = VoiceSetup.from_checkpoint(model.checkpoint)
    return TtsModel(model.checkpoint, model.lm, model.mimi, None, ids, voices, model.tts_delay_steps, config.dep_q,
                    model.kernels)


class _EndlessText:
    """Text that never ends: ``FIRST_WORDS`` words, then one more per poll (a step consumes at most one)."""

    name = "bench"

    def __init__(self, word: Entry) -> None:
        self.word, self.polls = word, 0

    def poll(self) -> tuple[list[Entry], bool]:
        self.polls += 1
        return [self.word] * (FIRST_WORDS if self.polls == 1 else 1), False

    def wait(self, timeout: float) -> bool:
        return True


class _BenchSpeech(TtsStream):
    def __init__(self, voice: SlotVoice, word: Entry) -> None:
        super().__init__(_discard)
        self.voice, self.word = voice, word

    def open(self, model: TtsModel, options: SpeakOptions) -> tuple[SlotVoice, EntryFeed]:
        return self.voice, _EndlessText(self.word)


class TtsRunner(_Runner):
    def __init__(self, model: BenchModel, batch: int, seed: int):
        tts = tts_model(model)
        super().__init__(TtsBatch(tts, SpeakOptions(seed=seed), batch), batch)
        self.model, self.delay_steps = model, tts.delay_steps
        # the voice is made once, as a server's or a `dsm speak` run's voice is: its conditions encoded and its
        # cross-attention source projected (timed apart: a never-seen voice adds this to its first audio)
        voice = SlotVoice("bench", tts_condition(model, 1, seed))
        start = time.perf_counter()
        self.voice = voice.prepare(self.stream)
        synchronize(model.lm.device)
        self.voice_projection_ms = (time.perf_counter() - start) * 1e3
        ids = tts.token_ids
        self.word = Entry((max(ids.new_word, ids.pad, ids.main, ids.other) + 1,), "word")
        self.first_output_steps = self.delay_steps + model.lm.config.max_delay + 1

    def new_stream(self, index: int) -> SlotStream:
        return _BenchSpeech(self.voice, self.word)


class CodecRunner:
    first_output_steps = 1
    voice_projection_ms = None

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
