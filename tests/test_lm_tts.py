"""TTS parity: our LM + step engine vs the reference ``TTSModel.generate`` on the tiny TTS fixtures (fp32, greedy).

Both sides run the reference text-stream state machine through the text-token hook, the same audio hook
(-1 before each codebook's delay, audio-prefix overrides) and skip the depformer for the first
``delay_steps`` steps, exactly as ``TTSModel.generate`` drives ``LMGen``.
"""

from __future__ import annotations

import torch
from test_lm_harness import OurTTSRun, encode_speech, ref_tts_frames, reference_checkpoint, voice_inputs

from dsmcli.engine import SamplingOptions
from dsmcli.hub.loaders import load_lm

SCRIPT = ("Hello there, this is a tiny voice speaking a few words so that the stream runs for a while, "
          "with enough words to keep the depformer busy for more than one hundred steps of audio.")
STEPS = 112
VOICES = ["voices/alice.wav", "voices/bob.wav"]


def _tts(repo: str, n_q: int = 8, **kwargs):
    from moshi.models.tts import TTSModel

    info = reference_checkpoint(repo)
    return TTSModel.from_checkpoint_info(info, device="cpu", dtype=torch.float32, temp=0.0, n_q=n_q, **kwargs)


def _assert_frames_equal(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours.shape[0] >= ref.shape[0], (ours.shape, ref.shape)
    ours = ours[: ref.shape[0]]
    assert ours.shape == ref.shape
    bad = (ours != ref).reshape(ours.shape[0], -1).any(1)
    assert not bad.any(), f"{what}: frames differ from step {int(bad.nonzero()[0, 0])} on"


def test_tts_two_voices_distilled_cfg(tiny_tts, tiny_voices):
    tts = _tts(tiny_tts, voice_repo=tiny_voices)
    voices = [tts.get_voice_path(v) for v in VOICES]
    entries = [tts.prepare_script([SCRIPT], padding_between=1)]
    ref = ref_tts_frames(tts, entries, [tts.make_condition_attributes(voices, cfg_coef=2.0)], steps=STEPS)
    assert ref.shape[0] >= 100
    audio = ref[tts.delay_steps :, :, 1:]
    assert (audio >= 0).all() and audio.unique().numel() > 8  # real codes from every codebook

    ours = load_lm(tiny_tts, dtype=torch.float32)
    condition = voice_inputs(voices, tts.max_speakers, "2.0")
    entries = [tts.prepare_script([SCRIPT], padding_between=1)]
    frames = OurTTSRun(tts, ours, entries, condition).run(STEPS)
    _assert_frames_equal(frames, ref, "tiny-tts")


def test_tts_prefix_real_cfg(tiny_tts_prefix, bria_24k):
    """Real CFG by batch doubling (coefficient 2, no text in the unconditional half, audio prefix masked)."""
    tts = _tts(tiny_tts_prefix)
    tts.cfg_coef = 2.0
    codes = encode_speech(tts.mimi, bria_24k(2.0))[0, :, :-2]
    prefix = torch.cat([torch.full_like(codes[:1], -1), codes])
    entries = [tts.prepare_script([SCRIPT], padding_between=1)]
    ref = ref_tts_frames(tts, entries, [], prefixes=[prefix], steps=100)

    ours = load_lm(tiny_tts_prefix, dtype=torch.float32)
    entries = [tts.prepare_script([SCRIPT], padding_between=1)]
    guided = SamplingOptions(temp=0.0, text_temp=0.0, cfg_coef=2.0)
    frames = OurTTSRun(tts, ours, entries, None, prefixes=[prefix], options=guided).run(100)
    _assert_frames_equal(frames, ref, "tiny-tts-prefix")
    unguided = OurTTSRun(tts, ours, [tts.prepare_script([SCRIPT], padding_between=1)], None, prefixes=[prefix]).run(100)
    assert not torch.equal(unguided[: ref.shape[0]], ref)  # guidance changed the output: CFG was exercised
    # The prefix codes come back as the audio of the first frames (after the 16-step text/audio delay).
    start = tts.delay_steps
    assert torch.equal(frames[start : start + codes.shape[1], 0, 1:].t(), codes)


def test_tts_sampling_draws_like_the_reference(tiny_tts, tiny_voices):
    """Temperature 0.6 / top-k 25 (text) and 250 (audio), as the scripts: with the same global RNG seed both sides
    consume the generator in the same order, so the sampled streams are identical."""
    tts = _tts(tiny_tts, voice_repo=tiny_voices)
    tts.temp = 0.6
    voices = [tts.get_voice_path(VOICES[0])]
    attributes = tts.make_condition_attributes(voices, cfg_coef=2.0)
    torch.manual_seed(1234)
    ref = ref_tts_frames(tts, [tts.prepare_script([SCRIPT], padding_between=1)], [attributes], steps=40)
    ours = load_lm(tiny_tts, dtype=torch.float32)
    options = SamplingOptions(temp=0.6, top_k=250, text_temp=0.6, text_top_k=25)
    run = OurTTSRun(tts, ours, [tts.prepare_script([SCRIPT], padding_between=1)], voice_inputs(voices, 5, "2.0"),
                    options=options)
    torch.manual_seed(1234)
    _assert_frames_equal(run.run(40), ref, "tiny-tts sampled")


def test_tts_fewer_codebooks_than_the_depformer(tiny_tts, tiny_voices):
    """``num_generated`` < dep_q (the reference sets ``lm.dep_q = n_q``): the other audio streams are -1 inputs."""
    tts = _tts(tiny_tts, n_q=5, voice_repo=tiny_voices)
    voices = [tts.get_voice_path(VOICES[1])]
    attributes = tts.make_condition_attributes(voices, cfg_coef=1.5)
    ref = ref_tts_frames(tts, [tts.prepare_script([SCRIPT], padding_between=1)], [attributes], steps=40)
    assert ref.shape[-1] == 1 + 5
    ours = load_lm(tiny_tts, dtype=torch.float32)
    run = OurTTSRun(tts, ours, [tts.prepare_script([SCRIPT], padding_between=1)], voice_inputs(voices, 5, "1.5"),
                    num_generated=5)
    _assert_frames_equal(run.run(40), ref, "tiny-tts n_q=5")
