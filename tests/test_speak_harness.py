"""Shared helpers of the ``dsm speak`` tests: a recording sink, our synthesis runs, reference runs and decoding.

The reference (``moshi``) is only imported by tests. Both sides run in float32; greedy unless a test says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

os.environ.setdefault("NO_TORCH_COMPILE", "1")

from dsmcli.errors import DsmError
from dsmcli.results import Word
from dsmcli.tts.synthesizer import SpeakJob, SpeechResult, SpeechSink, Synthesizer
from dsmcli.tts.model import SpeakOptions, TtsModel
from dsmcli.tts.text_feed import EntryFeed, FixedEntries
from dsmcli.tts.slot_voice import SlotVoice, resolve_voices, slot_voice

GREEDY = SpeakOptions(temperature=0.0)
AUDIO_ATOL = 1e-4  # decoded audio, ours vs the reference (float32 both)

MONOLOGUE = ("Hello there, this is a tiny voice speaking a few words so that the stream runs for a while, "
             "with more than twenty words to keep the depformer and the codec busy until the end.")
DIALOG = (
    "Hello Bob, did you hear the news about the tiny model? <break time=\"0.6s\"/> It speaks now.",
    "I did, Alice. It sounds a bit strange, but it follows the script word by word.",
    "Then let us give it one more line before we stop.",
)


@dataclass
class RecordingSink(SpeechSink):
    """Keeps everything a job produced."""

    wants_frames = True
    frames: list[torch.Tensor] = field(default_factory=list)
    chunks: list[np.ndarray] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    result: SpeechResult | None = None
    errors: list[DsmError] = field(default_factory=list)
    aborted: bool = False

    def frame(self, frame: torch.Tensor) -> None:
        self.frames.append(frame.clone())

    def audio(self, pcm: np.ndarray) -> None:
        self.chunks.append(pcm.copy())

    def word(self, word: Word) -> None:
        self.words.append(word)

    def finish(self, result: SpeechResult) -> None:
        self.result = result

    def fail(self, error: DsmError) -> None:
        self.errors.append(error)

    def abort(self) -> None:
        self.aborted = True

    @property
    def pcm(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.float32)

    @property
    def frame_tensor(self) -> torch.Tensor:
        """``[T, 1 + G]``."""
        return torch.stack(self.frames)


def our_voice(model: TtsModel, voices: list[str], options: SpeakOptions = GREEDY) -> SlotVoice:
    return slot_voice(model, resolve_voices(model.voices, voices), model.cfg_value(options))


def job(name: str, voice: SlotVoice, feed: EntryFeed, sink: SpeechSink | None = None) -> SpeakJob:
    return SpeakJob(name, lambda: (voice, feed), sink if sink is not None else RecordingSink())


def fixed(model: TtsModel, turns: list[str] | tuple[str, ...], options: SpeakOptions = GREEDY) -> FixedEntries:
    return FixedEntries("test", model.entries(list(turns), options))


def run_jobs(model: TtsModel, jobs: list[SpeakJob], options: SpeakOptions = GREEDY, batch_size: int = 1) -> None:
    Synthesizer(model, options, batch_size=batch_size).run(jobs)


def synthesize(model: TtsModel, voice: SlotVoice, turns: list[str] | tuple[str, ...],
               options: SpeakOptions = GREEDY) -> RecordingSink:
    sink = RecordingSink()
    run_jobs(model, [job("test", voice, fixed(model, turns, options), sink)], options)
    assert sink.result is not None and not sink.errors
    return sink


# ------------------------------------------------------------------------------------------- reference


def ref_tts(repo: str, n_q: int = 8, **kwargs: Any) -> Any:
    from moshi.models.loaders import CheckpointInfo
    from moshi.models.tts import TTSModel

    info = CheckpointInfo.from_hf_repo(repo)
    return TTSModel.from_checkpoint_info(info, device="cpu", dtype=torch.float32, temp=0.0, n_q=n_q, **kwargs)


@dataclass(frozen=True)
class RefSpeech:
    frames: torch.Tensor  # [T, 1 + G]
    pcm: np.ndarray  # decoded frames[delay_steps:], clipped, with the prefix frames dropped
    end_step: int
    consumption: list[int]
    transcript: list[tuple[str, int]]


def ref_generate(tts: Any, entries: list[Any], attributes: list[Any], prefix: torch.Tensor | None = None
                 ) -> RefSpeech:
    """Reference ``TTSModel.generate`` for one item, then a streaming Mimi decode of ``frames[delay_steps:]`` as in
    ``dsm:scripts/tts_pytorch.py`` (dropping the prefix frames as ``run_tts.py`` does)."""
    result = tts.generate([entries], attributes, prefixes=None if prefix is None else [prefix])
    frames = torch.stack([f[0, :, 0] for f in result.frames])
    pcms = []
    with tts.mimi.streaming(1), torch.no_grad():
        for frame in result.frames[tts.delay_steps :]:
            pcms.append(torch.clip(tts.mimi.decode(frame[:, 1:, :]), -1, 1)[0, 0].numpy())
    skip = 0 if prefix is None else prefix.shape[-1]
    pcm = np.concatenate(pcms[skip:])
    return RefSpeech(frames, pcm, result.end_steps[0], result.all_consumption_times[0], result.all_transcripts[0])
