"""The TTS text side on the generated tiny checkpoints (conftest ``tiny_tts`` / ``tiny_voices``), loaded through
the same Hugging Face cache path as a user's download: voices, conditioning, and entries with the real tokenizer.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("NO_TORCH_COMPILE", "1")

from dsmcli.errors import InputError  # noqa: E402
from dsmcli.hub.checkpoint import load_checkpoint  # noqa: E402
from dsmcli.tts.script import script_to_entries  # noqa: E402
from dsmcli.tts.state_machine import TextStreamConfig  # noqa: E402
from dsmcli.tts.tokens import TtsTokenIds  # noqa: E402
from dsmcli.tts.voices import (  # noqa: E402
    VoiceKind,
    VoiceSetup,
    build_speaker_condition,
    list_voices,
    load_voice_embedding,
    resolve_voice,
    voice_model_tag,
)


def test_tiny_tts_voices_and_condition(tiny_tts, tiny_voices):
    ref_tts = pytest.importorskip("moshi.models.tts")
    checkpoint = load_checkpoint(tiny_tts)
    setup = VoiceSetup.from_checkpoint(checkpoint, voices=tiny_voices)
    assert setup.kind is VoiceKind.EMBEDDING and setup.suffix == ".1e68beda@240.safetensors"
    voices = [resolve_voice(name, setup) for name in ("voices/alice.wav", "voices/bob.wav")]
    embeddings = [load_voice_embedding(v.path, setup) for v in voices]
    assert all(e.tensor.shape[:2] == (1, setup.embedding_dim) for e in embeddings)
    ours = build_speaker_condition(embeddings, setup.max_speakers)
    fake = type("Fake", (), {"max_speakers": setup.max_speakers})()
    ref = ref_tts.TTSModel.make_condition_attributes(fake, [v.path for v in voices], cfg_coef=None)
    assert torch.equal(ours.tensor, ref.tensor["speaker_wavs"].tensor)
    assert torch.equal(ours.mask, ref.tensor["speaker_wavs"].mask)
    with pytest.raises(InputError, match="unknown voice"):
        resolve_voice("voices/carol.wav", setup)
    listed = list_voices([setup.voices], model_tag=voice_model_tag(setup))
    assert [(v.name, v.kind) for v in listed if v.kind is VoiceKind.EMBEDDING] == [
        ("voices/alice.wav", VoiceKind.EMBEDDING), ("voices/bob.wav", VoiceKind.EMBEDDING)]


def test_tiny_tts_prefix_voice(tiny_tts_prefix, tiny_voices):
    setup = VoiceSetup.from_checkpoint(load_checkpoint(tiny_tts_prefix), voices=tiny_voices)
    assert setup.kind is VoiceKind.AUDIO_PREFIX and not setup.multi_speaker
    voice = resolve_voice("voices/alice.wav", setup)
    assert voice.kind is VoiceKind.AUDIO_PREFIX and voice.path.name == "alice.wav"


@pytest.mark.parametrize("multi_speaker", [True, False])
def test_entries_with_the_checkpoint_tokenizer(tiny_tts, multi_speaker):
    ref_tts = pytest.importorskip("moshi.models.tts")
    from sentencepiece import SentencePieceProcessor

    checkpoint = load_checkpoint(tiny_tts)
    tokenizer = SentencePieceProcessor(model_file=str(checkpoint.tokenizer_path))
    ids = TtsTokenIds.from_lm_config(checkpoint.lm_config)
    config = TextStreamConfig(ids, checkpoint.tts.second_stream_ahead)
    assert config.second_stream_ahead == 2 and ids.card == checkpoint.lm_kwargs["text_card"] + 1
    script = ["Hello: this is (a) test <break time=\"0.5s\"/> of the tiny model’s voice.", "Bonjour à vous!"]
    ours = script_to_entries(tokenizer, ids, script, multi_speaker=multi_speaker)
    ref = ref_tts.script_to_entries(tokenizer, ref_tts.TokenIds(ids.card), 12.5, script,
                                    multi_speaker=multi_speaker, padding_between=1)
    assert [(list(e.tokens), e.text, e.padding) for e in ours] == [(e.tokens, e.text, e.padding) for e in ref]
    assert max(t for e in ours for t in e.tokens) < ids.card
