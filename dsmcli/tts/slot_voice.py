"""Voices → what one batch slot is conditioned on (FORMAT.md §6.7, §6.8).

An embedding model (tts-1.6b) takes up to ``max_speakers`` voice embeddings through cross-attention, plus the
``control`` / ``cfg`` LUT conditions: :class:`SlotVoice` ``condition``. An audio-prefix model (tts-0.75b) takes
the Mimi codes of a voice recording, fed as the first steps of the stream: :class:`SlotVoice` ``prefix``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from dsmcli.engine import ConditionInputs, LMStream, PreparedCondition, TensorCondition
from dsmcli.errors import InputError
from dsmcli.tts.model import TtsModel
from dsmcli.tts.voices import (
    VOICE_CONDITIONER,
    ResolvedVoice,
    VoiceKind,
    VoiceSetup,
    build_audio_prefix,
    build_speaker_condition,
    load_voice_embedding,
    resolve_voice,
)


@dataclass(frozen=True)
class SlotVoice:
    """One slot's conditioning.

    ``condition``: the slot's :class:`ConditionInputs` (batch of 1), None for a model without conditioners;
    ``prefix``: ``[1 + K, P]`` audio prefix (text row of ``zero``, then K codebooks), None without one;
    ``projected``: ``condition`` encoded and its cross-attention source projected once, when the voice was made
    (:meth:`~dsmcli.engine.LMStream.project_condition`), so that a stream starting with this voice projects
    nothing; None: projected by the stream that uses it (as is one made for another kind of stream).
    """

    name: str
    condition: ConditionInputs | None
    prefix: Tensor | None = None
    projected: PreparedCondition | None = None

    def prepared(self, stream: LMStream) -> PreparedCondition | None:
        """This voice's conditions as ``stream`` takes them: ``projected`` when it was made for a stream of its
        kind (real CFG, cross-attention dtype), else projected now."""
        if self.projected is not None and stream.accepts(self.projected):
            return self.projected
        return stream.project_condition(self.condition)

    def prepare(self, stream: LMStream | None) -> SlotVoice:
        """This voice with its conditions projected for ``stream`` (None: as it is)."""
        if stream is None or self.condition is None:
            return self
        projected = self.prepared(stream)
        return self if projected is self.projected else replace(self, projected=projected)

    @property
    def prefix_frames(self) -> int:
        """``P``: steps of prefix before the text starts (0 without a prefix)."""
        return 0 if self.prefix is None else int(self.prefix.shape[-1])


def resolve_voices(setup: VoiceSetup, names: Sequence[str]) -> list[ResolvedVoice]:
    """``--voice`` values → files on disk (fetched if needed), checked against the model's kind. InputError."""
    return [resolve_voice(name, setup) for name in names]


def embedding_voice(model: TtsModel, voices: Sequence[ResolvedVoice], cfg_value: str | None,
                    stream: LMStream | None = None) -> SlotVoice:
    """Voices (MAIN first) of an embedding model → the slot's conditions (speaker slots + LUT values), projected
    for ``stream`` (the :class:`~dsmcli.tts.batch.TtsBatch`'s; None: by the stream that uses it)."""
    embeddings = [load_voice_embedding(voice.path, model.voices) for voice in voices]
    speakers = build_speaker_condition(embeddings, model.voices.max_speakers)
    condition = ConditionInputs(values=model.lut_values(cfg_value),
                                tensors={VOICE_CONDITIONER: TensorCondition(speakers.tensor, speakers.mask)})
    return SlotVoice(" + ".join(voice.name for voice in voices), condition).prepare(stream)


def _read_voice_audio(voice: ResolvedVoice) -> np.ndarray:
    from dsmcli.audio import open_audio

    with open_audio(str(voice.path)) as source:
        chunks = list(source)
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def prefix_voice(model: TtsModel, voice: ResolvedVoice | None, stream: LMStream | None = None) -> SlotVoice:
    """An audio-prefix model's voice: the recording's Mimi codes minus the last 2 frames (None: no prefix); its
    LUT conditions encoded for ``stream`` (None: by the stream that uses it)."""
    condition = None if not model.config.conditioners else ConditionInputs(values=model.lut_values(None))
    if voice is None:
        return SlotVoice("", condition).prepare(stream)
    samples = _read_voice_audio(voice)
    device = model.lm.device
    wav = torch.from_numpy(samples).to(device)[None, None]  # [1, 1, N]
    codes = model.mimi.encode(wav)[0]  # [K, T]
    return SlotVoice(voice.name, condition, build_audio_prefix(codes, model.token_ids)).prepare(stream)


def slot_voice(model: TtsModel, voices: Sequence[ResolvedVoice], cfg_value: str | None,
               stream: LMStream | None = None) -> SlotVoice:
    """The slot conditioning for resolved voices (MAIN first), projected once for ``stream`` (the
    :class:`~dsmcli.tts.batch.TtsBatch`'s LM stream; None: projected by each stream that starts with it).
    InputError for unusable voices."""
    if model.voices.kind is VoiceKind.EMBEDDING:
        if not voices:
            raise InputError(f"{model.name} needs a voice")
        return embedding_voice(model, voices, cfg_value, stream)
    if len(voices) > 1:
        raise InputError(f"{model.name} conditions on one audio prefix; got {len(voices)} voices")
    return prefix_voice(model, voices[0] if voices else None, stream)
