"""``dsm speak`` / ``dsm dialog`` parity with the reference on the tiny TTS fixtures (float32, greedy).

Reference: ``TTSModel.generate`` (state machine, hooks, audio delay, CFG) + a streaming Mimi decode of
``frames[delay_steps:]`` as ``dsm:scripts/tts_pytorch.py`` does. Ours: the :class:`~dsmcli.tts.synthesizer.Synthesizer`
through a recording sink. Compared: every frame (text + all codebooks), the consumption steps, ``end_step``, the
decoded audio (max abs <= 1e-4) and the word times (consumption step / 12.5 s, prefix steps removed).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("moshi.models.tts")

from test_speak_harness import (
    AUDIO_ATOL,
    DIALOG,
    GREEDY,
    MONOLOGUE,
    our_voice,
    ref_generate,
    ref_tts,
    synthesize,
)

from dsmcli.tts.model import SpeakOptions, TtsModel

FRAME_RATE = 12.5


@pytest.fixture(scope="module")
def tiny_model(tiny_tts, tiny_voices):
    return TtsModel.load(tiny_tts, voice_repo=tiny_voices, dtype=torch.float32)


def _assert_same_speech(ours, ref, prefix_frames: int = 0) -> None:
    assert ours.result is not None
    frames = ours.frame_tensor
    assert frames.shape == ref.frames.shape, (frames.shape, ref.frames.shape)
    differs = (frames != ref.frames).any(1)
    assert not differs.any(), f"frames differ from time {int(differs.nonzero()[0, 0])} on"
    assert list(ours.result.consumption_steps) == ref.consumption
    assert ours.result.end_step == ref.end_step
    pcm = ours.pcm
    assert pcm.shape == ref.pcm.shape
    error = float(np.abs(pcm - ref.pcm).max())
    assert error <= AUDIO_ATOL, error
    assert ours.result.frames * 1920 == len(pcm)
    assert [w.text.strip() for w in ours.words] == [word for word, _ in ref.transcript]
    starts = [(step - prefix_frames) / FRAME_RATE for _, step in ref.transcript]
    assert [w.start for w in ours.words] == pytest.approx(starts, abs=1e-9)


def test_monologue_matches_reference(tiny_model, tiny_tts, tiny_voices):
    assert len(MONOLOGUE.split()) >= 20
    tts = ref_tts(tiny_tts, voice_repo=tiny_voices)
    attributes = tts.make_condition_attributes([tts.get_voice_path("voices/alice.wav")], cfg_coef=2.0)
    ref = ref_generate(tts, tts.prepare_script([MONOLOGUE], padding_between=1), [attributes])
    assert len(ref.transcript) >= 20 and ref.pcm.std() > 0.01
    ours = synthesize(tiny_model, our_voice(tiny_model, ["voices/alice.wav"]), [MONOLOGUE])
    _assert_same_speech(ours, ref)
    # audio = end_step + final_padding - max(delays) frames; words end at the next consumption / end_step
    assert ours.result.frames == ref.end_step + 4 - 2
    assert ours.words[-1].end == pytest.approx(ref.end_step / FRAME_RATE)
    assert all(a.end == b.start for a, b in zip(ours.words, ours.words[1:]))


def test_dialog_two_voices_and_break_matches_reference(tiny_model, tiny_tts, tiny_voices):
    tts = ref_tts(tiny_tts, voice_repo=tiny_voices)
    voices = [tts.get_voice_path(v) for v in ("voices/alice.wav", "voices/bob.wav")]
    entries = tts.prepare_script(list(DIALOG), padding_between=1)
    assert any(not e.tokens for e in entries)  # the <break> is an entry
    ref = ref_generate(tts, entries, [tts.make_condition_attributes(voices, cfg_coef=2.0)])
    ours = synthesize(tiny_model, our_voice(tiny_model, ["voices/alice.wav", "voices/bob.wav"]), DIALOG)
    _assert_same_speech(ours, ref)
    # The word before the break ends when the break is consumed, not when the next word starts.
    news = next(i for i, w in enumerate(ours.words) if w.text.strip() == "model?")
    assert ours.words[news + 1].start - ours.words[news].end >= 0.6 - 1e-9


def test_distilled_cfg_value_changes_the_speech(tiny_model, tiny_tts, tiny_voices):
    tts = ref_tts(tiny_tts, voice_repo=tiny_voices)
    attributes = tts.make_condition_attributes([tts.get_voice_path("voices/bob.wav")], cfg_coef=3.5)
    ref = ref_generate(tts, tts.prepare_script([DIALOG[1]], padding_between=1), [attributes])
    options = SpeakOptions(temperature=0.0, cfg=3.5)
    ours = synthesize(tiny_model, our_voice(tiny_model, ["voices/bob.wav"], options), [DIALOG[1]], options)
    _assert_same_speech(ours, ref)
    default = synthesize(tiny_model, our_voice(tiny_model, ["voices/bob.wav"]), [DIALOG[1]])
    assert not torch.equal(default.frame_tensor[: len(ours.frames)], ours.frame_tensor[: len(default.frames)])


def test_audio_prefix_real_cfg_matches_reference(tiny_tts_prefix, tiny_voices):
    tts = ref_tts(tiny_tts_prefix, voice_repo=tiny_voices)
    tts.cfg_coef = 2.0
    model = TtsModel.load(tiny_tts_prefix, voice_repo=tiny_voices, dtype=torch.float32)
    voice = our_voice(model, ["voices/alice.wav"])
    ref_prefix = tts.get_prefix(voice_path := model.voices.voices.fetch("voices/alice.wav"))
    assert voice_path.is_file() and torch.equal(voice.prefix, ref_prefix)
    text = DIALOG[0]
    ref = ref_generate(tts, tts.prepare_script([text], padding_between=1), [], prefix=ref_prefix)
    ours = synthesize(model, voice, [text])
    assert model.sampling(GREEDY).cfg_coef == 2.0
    _assert_same_speech(ours, ref, prefix_frames=voice.prefix_frames)
    assert ours.words[0].start >= 0
