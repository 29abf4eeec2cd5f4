"""Voices projected once, when they are made (issue 15): a stream starting with a prepared voice projects nothing
and gives the bits of a stream that projects the voice in its first step; slots stay independent; a voice
prepared for another kind of stream (kernels, real CFG) is projected again, never used with the wrong dtype."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_speak_harness import AUDIO_ATOL, DIALOG, GREEDY, MONOLOGUE, RecordingSink, fixed, job, our_voice, run_jobs

from dsmcli.engine import ConditionInputs, EngineOptions, LMStream, SamplingOptions
from dsmcli.engine.transformer import CrossAttention
from dsmcli.kernels import KernelChoice
from dsmcli.tts.batch import TtsBatch
from dsmcli.tts.model import SpeakOptions, TtsModel
from dsmcli.tts.slot_voice import SlotVoice


@pytest.fixture(scope="module")
def tiny_model(tiny_tts, tiny_voices):
    return TtsModel.load(tiny_tts, voice_repo=tiny_voices, dtype=torch.float32)


@pytest.fixture
def projections(monkeypatch):
    """Counts the cross-attention source projections (one per layer and projected batch)."""
    calls: list[int] = []
    original = CrossAttention.project_source

    def counted(self, source, native=None):
        calls.append(int(source.shape[0]))
        return original(self, source, native)

    monkeypatch.setattr(CrossAttention, "project_source", counted)
    return calls


def _prepared(model: TtsModel, voice: SlotVoice, options: SpeakOptions = GREEDY) -> SlotVoice:
    """``voice`` projected by a stream like the one a synthesizer of ``model`` runs (not the same object)."""
    prepared = voice.prepare(TtsBatch(model, options).stream)
    assert prepared.projected is not None and prepared.projected is not voice.projected
    return prepared


def _same(a: RecordingSink, b: RecordingSink, audio_atol: float = 0.0) -> None:
    assert a.result is not None and b.result is not None and not a.errors and not b.errors
    assert torch.equal(a.frame_tensor, b.frame_tensor)  # text and audio tokens
    assert a.result.consumption_steps == b.result.consumption_steps and a.words == b.words
    assert a.pcm.shape == b.pcm.shape and float(np.abs(a.pcm - b.pcm).max(initial=0.0)) <= audio_atol


def _run(model: TtsModel, work: list[tuple[SlotVoice, list[str]]], batch_size: int = 1,
         options: SpeakOptions = GREEDY) -> list[RecordingSink]:
    sinks = [RecordingSink() for _ in work]
    run_jobs(model, [job(f"job{i}", voice, fixed(model, turns, options), sink)
                     for i, ((voice, turns), sink) in enumerate(zip(work, sinks))], options, batch_size)
    return sinks


def test_prepared_voice_is_bit_identical_and_projects_nothing(tiny_model, projections):
    plain = our_voice(tiny_model, ["voices/alice.wav"])
    assert plain.projected is None
    layers = tiny_model.config.transformer.num_layers
    (first,) = _run(tiny_model, [(plain, [MONOLOGUE])])
    assert projections == [1] * layers  # projected in the stream's first step, as before
    projections.clear()
    prepared = _prepared(tiny_model, plain)
    assert projections == [1] * layers  # when the voice is made
    projections.clear()
    (second,) = _run(tiny_model, [(prepared, [MONOLOGUE])])
    assert projections == []  # the stream projects nothing
    _same(first, second)
    assert prepared.projected is not None and prepared.projected.sum is not None
    k, v = prepared.projected.cross[0]  # the float model: SDPA over keys/values of the model dtype
    assert k.dtype == v.dtype == torch.float32 and k.shape[0] == 1


def test_batch1_stream_references_the_prepared_tensors_and_leaves_them_unchanged(tiny_model):
    voice = _prepared(tiny_model, our_voice(tiny_model, ["voices/bob.wav"]))
    projected = voice.projected
    assert projected is not None and projected.cross is not None
    before = [(k.clone(), v.clone()) for k, v in projected.cross]
    batch = TtsBatch(tiny_model, GREEDY)
    stream = batch.stream
    state = stream.init_state(1, [projected])
    assert state.backbone.cross[0][0] is projected.cross[0][0] and state.condition_sum is projected.sum
    for _ in range(5):
        stream.step(None, state)
    other = _prepared(tiny_model, our_voice(tiny_model, ["voices/alice.wav"])).projected
    stream.set_condition(state, [other], torch.ones(1, dtype=torch.bool))
    assert state.backbone.cross[0][1] is other.cross[0][1]
    for (k, v), (k0, v0) in zip(projected.cross, before):
        assert torch.equal(k, k0) and torch.equal(v, v0)


def test_two_slots_two_voices_and_a_third_mid_run(tiny_model, projections):
    """Batch of 2 with prepared voices; job 2 (a third voice) takes job 0's slot while job 1 runs. Each equals the
    single run of its voice projected in the stream's first step."""
    plain = {name: our_voice(tiny_model, names) for name, names in
             (("bob", ["voices/bob.wav"]), ("alice", ["voices/alice.wav"]),
              ("both", ["voices/bob.wav", "voices/alice.wav"]))}
    texts = {"bob": [DIALOG[2]], "alice": [DIALOG[0]], "both": [DIALOG[1], DIALOG[2]]}
    singles = {name: _run(tiny_model, [(voice, texts[name])])[0] for name, voice in plain.items()}
    assert singles["bob"].result.steps < singles["alice"].result.steps  # so "both" starts in bob's slot mid-run
    prepared = {name: _prepared(tiny_model, voice) for name, voice in plain.items()}
    projections.clear()
    batched = _run(tiny_model, [(prepared[name], texts[name]) for name in ("bob", "alice", "both")], batch_size=2)
    assert projections == []
    for sink, name in zip(batched, ("bob", "alice", "both")):
        _same(sink, singles[name], audio_atol=AUDIO_ATOL)  # Mimi decoding a batch of 2 rounds differently
    # the same with unprepared voices gives the same tokens (the old path, projecting in the step)
    unprepared = _run(tiny_model, [(plain[name], texts[name]) for name in ("bob", "alice", "both")], batch_size=2)
    for a, b in zip(batched, unprepared):
        _same(a, b)


def test_voice_prepared_under_other_kernels_is_projected_again(tiny_tts, tiny_voices):
    """A quantized model's stream with native kernels keeps float16 keys/values; one with torch kernels must not
    take them: the engine refuses them in one clear error, the TTS batch projects the voice again."""
    model = TtsModel.load(tiny_tts, voice_repo=tiny_voices, dtype=torch.float32, quantize="int8",
                          kernels=KernelChoice.NATIVE)
    native = TtsBatch(model, GREEDY).stream
    if native.cross_native is None:
        pytest.skip("the native decode-attention kernel is not available here")
    torch_model = replace(model, kernels=KernelChoice.TORCH)
    plain = our_voice(model, ["voices/alice.wav"])
    voice = plain.prepare(native)
    assert voice.projected.native and voice.projected.cross[0][0].dtype == torch.float16
    assert voice.projected.cross[0][0].is_contiguous()
    torch_stream = TtsBatch(torch_model, GREEDY).stream
    assert torch_stream.cross_native is None and not torch_stream.accepts(voice.projected)
    with pytest.raises(ValueError, match="prepared for another stream kind"):
        torch_stream.init_state(1, [voice.projected])
    again = voice.prepared(torch_stream)
    assert again.cross[0][0].dtype == torch.float32
    (expected,) = _run(torch_model, [(plain, [DIALOG[0]])])
    (got,) = _run(torch_model, [(voice, [DIALOG[0]])])
    _same(got, expected)
    (native_plain,) = _run(model, [(plain, [DIALOG[0]])])
    (native_prepared,) = _run(model, [(voice, [DIALOG[0]])])
    _same(native_prepared, native_plain)


def test_real_cfg_rows_as_the_stream_encodes_them(tiny_model):
    """Real CFG (as tts-0.75b runs it; here on the tiny cross-attention model, whose conditions it exercises):
    the prepared rows are the conditional then the unconditional row exactly as ``init_state`` derives them, and
    a stream of prepared slots steps to the same logits, for one slot and for a batch of two voices."""
    stream = LMStream(tiny_model.lm, SamplingOptions(temp=0.0, text_temp=0.0, cfg_coef=3.0), cfg_no_text=True,
                      num_generated=tiny_model.n_q, engine=EngineOptions(kernels=tiny_model.kernels))
    assert stream.options.uses_cfg
    conditions = [our_voice(tiny_model, [name]).condition for name in ("voices/alice.wav", "voices/bob.wav")]
    prepared = [stream.project_condition(condition) for condition in conditions]
    assert all(p.cfg and p.sum.shape[0] == 2 and p.cross[0][0].shape[0] == 2 for p in prepared)
    for condition, ready in zip(conditions, prepared):  # one slot: the bits of the stream's own encoding
        expected = stream.init_state(1, condition)
        got = stream.init_state(1, [ready])
        assert torch.equal(got.condition_sum, expected.condition_sum)
        for (k, v), (k0, v0) in zip(got.backbone.cross, expected.backbone.cross):
            assert torch.equal(k, k0) and torch.equal(v, v0)
        for _ in range(4):
            a, b = stream.step(None, got), stream.step(None, expected)
            assert torch.equal(a.text_logits, b.text_logits) and torch.equal(a.audio_tokens, b.audio_tokens)
    # two slots: each slot's rows (conditional at b, unconditional at B + b) are its own batch-1 rows, bit for bit;
    # the batch encoded at once (the old path) rounds the LUT projection of its sum condition differently
    got = stream.init_state(2, prepared)
    expected = stream.init_state(2, ConditionInputs.concat(conditions))
    rows = [0, 2, 1, 3]  # [cond alice, cond bob, uncond alice, uncond bob] <- [alice c/u, bob c/u]
    assert torch.equal(got.condition_sum, torch.cat([p.sum for p in prepared])[rows])
    torch.testing.assert_close(got.condition_sum, expected.condition_sum, rtol=0, atol=1e-6)
    for i, (k, v) in enumerate(got.backbone.cross):
        assert torch.equal(k, torch.cat([p.cross[i][0] for p in prepared])[rows])
        assert torch.equal(v, torch.cat([p.cross[i][1] for p in prepared])[rows])
        k0, v0 = expected.backbone.cross[i]
        assert torch.equal(k, k0) and torch.equal(v, v0)
    plain = LMStream(tiny_model.lm, SamplingOptions(), engine=EngineOptions(kernels=tiny_model.kernels))
    assert not plain.accepts(prepared[0])  # made with CFG rows: a stream without real CFG projects again
    with pytest.raises(ValueError, match="another stream kind"):
        plain.init_state(1, [prepared[0]])


class _WatchedStdin(io.RawIOBase):
    """A pipe whose first read records how many projections had run by then."""

    def __init__(self, data: bytes, calls: list[int]) -> None:
        self.data, self.calls, self.projected_at_first_read = data, calls, None

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        if self.projected_at_first_read is None:
            self.projected_at_first_read = len(self.calls)
        out, self.data = self.data[:size], self.data[size:]
        return out

    read = read1


def test_speak_prepares_the_voice_before_reading_stdin(tiny_tts, tiny_voices, tmp_path, projections):
    from dsmcli.commands.speak_run import SpeakInput, SpeakRequest, execute

    stdin = _WatchedStdin(b"Hello there, the voice was ready before this text.", projections)
    request = SpeakRequest(inputs=(SpeakInput(source="-"),), model=tiny_tts, voice_repo=tiny_voices,
                           voices=("voices/alice.wav",), options=GREEDY, output=str(tmp_path / "out.wav"),
                           stdin=stdin)  # type: ignore[arg-type]
    assert execute(request).exit_code == 0
    layers = TtsModel.load(tiny_tts, voice_repo=tiny_voices).config.transformer.num_layers
    assert stdin.projected_at_first_read == layers  # every layer projected before the first byte was read
    assert len(projections) == layers  # and never again in the stream
