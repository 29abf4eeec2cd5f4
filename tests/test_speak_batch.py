"""The synthesis loop beyond one job: independent batch slots, text streamed word by word, seeded sampling.

Greedy float32 throughout, except the sampling test. "Single" runs are the parity-tested path
(test_speak_parity.py), so equality with them carries the reference parity over to batches and streams.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_speak_harness import (
    AUDIO_ATOL,
    DIALOG,
    GREEDY,
    MONOLOGUE,
    RecordingSink,
    fixed,
    job,
    our_voice,
    run_jobs,
    synthesize,
)

from dsmcli.errors import InputError
from dsmcli.tts.model import SpeakOptions, TtsModel
from dsmcli.tts.text_feed import FixedEntries


@pytest.fixture(scope="module")
def tiny_model(tiny_tts, tiny_voices):
    return TtsModel.load(tiny_tts, voice_repo=tiny_voices, dtype=torch.float32)


def _same(a: RecordingSink, b: RecordingSink, audio_atol: float = 0.0) -> None:
    """Same tokens, consumption steps and words; audio equal (bit-exact unless ``audio_atol``: Mimi decoding a
    batch of 2 rounds differently from a batch of 1)."""
    assert a.result is not None and b.result is not None
    assert torch.equal(a.frame_tensor, b.frame_tensor)
    assert a.result.consumption_steps == b.result.consumption_steps
    assert a.pcm.shape == b.pcm.shape and float(np.abs(a.pcm - b.pcm).max(initial=0.0)) <= audio_atol
    assert a.words == b.words


def test_batch_slots_are_independent_and_reused(tiny_model):
    """Three jobs, two slots: different voices and lengths; the third reuses the slot of the shorter one (LM, Mimi
    and text state reset, voice changed with set_condition). Each equals its single run."""
    alice = our_voice(tiny_model, ["voices/alice.wav"])
    bob = our_voice(tiny_model, ["voices/bob.wav"])
    both = our_voice(tiny_model, ["voices/bob.wav", "voices/alice.wav"])
    work = [(bob, [DIALOG[2]]), (alice, [DIALOG[0]]), (both, [DIALOG[1], DIALOG[2]])]
    singles = [synthesize(tiny_model, voice, turns) for voice, turns in work]
    sinks = [RecordingSink() for _ in work]
    jobs = [job(f"job{i}", voice, fixed(tiny_model, turns), sink) for i, ((voice, turns), sink) in
            enumerate(zip(work, sinks))]
    run_jobs(tiny_model, jobs, batch_size=2)
    assert singles[0].result.steps < singles[1].result.steps  # job 2 starts in job 0's slot while job 1 runs
    for batched, single in zip(sinks, singles):
        _same(batched, single, audio_atol=AUDIO_ATOL)


class WordByWord:
    """An entry feed that releases one word of text per poll and records how much audio existed at its end."""

    def __init__(self, model: TtsModel, text: str, sink: RecordingSink) -> None:
        self.name = "words"
        self.pieces = [word + " " for word in text.split(" ")]
        self.stream = model.entry_stream(GREEDY)
        self.sink = sink
        self.audio_frames_at_close: int | None = None

    def poll(self):
        if not self.pieces:
            entries = self.stream.close()
            self.audio_frames_at_close = len(self.sink.chunks)
            return entries, True
        return self.stream.feed(self.pieces.pop(0)), False

    def wait(self, timeout: float) -> None:
        return None


def test_streamed_text_equals_whole_text(tiny_model):
    voice = our_voice(tiny_model, ["voices/alice.wav"])
    whole = synthesize(tiny_model, voice, [MONOLOGUE])
    sink = RecordingSink()
    feed = WordByWord(tiny_model, MONOLOGUE, sink)
    run_jobs(tiny_model, [job("stream", voice, feed, sink)])
    _same(sink, whole)
    assert feed.audio_frames_at_close is not None and feed.audio_frames_at_close > 0  # audio before the text ended


def test_streamed_text_waits_for_the_lookahead_words(tiny_model):
    """With text arriving slowly (one word per several polls), the slot is held back, never guessing."""
    voice = our_voice(tiny_model, ["voices/bob.wav"])
    whole = synthesize(tiny_model, voice, [DIALOG[1]])

    class Slow(WordByWord):
        def __init__(self, *args):
            super().__init__(*args)
            self.calls = 0

        def poll(self):
            self.calls += 1
            return super().poll() if self.calls % 7 == 0 else ([], False)

    sink = RecordingSink()
    run_jobs(tiny_model, [job("slow", voice, Slow(tiny_model, DIALOG[1], sink), sink)])
    _same(sink, whole)


def test_seeded_sampling_is_reproducible(tiny_model):
    voice = our_voice(tiny_model, ["voices/alice.wav"])
    runs = [synthesize(tiny_model, voice, [DIALOG[2]], SpeakOptions(seed=seed)) for seed in (7, 7, 8)]
    _same(runs[0], runs[1])
    assert not torch.equal(runs[0].frame_tensor[:40], runs[2].frame_tensor[:40])
    greedy = synthesize(tiny_model, voice, [DIALOG[2]])
    assert not torch.equal(runs[0].frame_tensor[:40], greedy.frame_tensor[:40])


def test_fewer_codebooks_match_the_reference(tiny_model, tiny_tts, tiny_voices):
    """``--n-q 4``: the depformer generates 4 codebooks, the others are fed -1 (reference ``lm.dep_q = n_q``)."""
    pytest.importorskip("moshi.models.tts")
    from test_speak_harness import ref_generate, ref_tts

    tts = ref_tts(tiny_tts, voice_repo=tiny_voices, n_q=4)
    attributes = tts.make_condition_attributes([tts.get_voice_path("voices/bob.wav")], cfg_coef=2.0)
    ref = ref_generate(tts, tts.prepare_script([DIALOG[2]], padding_between=1), [attributes])
    model = TtsModel.load(tiny_tts, voice_repo=tiny_voices, dtype=torch.float32, n_q=4)
    ours = synthesize(model, our_voice(model, ["voices/bob.wav"]), [DIALOG[2]])
    assert ours.frame_tensor.shape[1] == 5 and torch.equal(ours.frame_tensor, ref.frames)
    assert float(np.abs(ours.pcm - ref.pcm).max()) <= 1e-4


def test_failing_jobs_do_not_stop_the_others(tiny_model):
    voice = our_voice(tiny_model, ["voices/alice.wav"])

    def broken():
        raise InputError("broken input")

    failed = RecordingSink()
    good = RecordingSink()
    from dsmcli.tts.synthesizer import SpeakJob

    run_jobs(tiny_model, [SpeakJob("bad", broken, failed), job("good", voice, fixed(tiny_model, [DIALOG[2]]), good)],
             batch_size=2)
    assert [str(e) for e in failed.errors] == ["broken input"] and failed.result is None
    assert good.result is not None and good.result.frames > 0


def test_empty_entries_end_quickly(tiny_model):
    """No entries at all (e.g. only whitespace streamed): the model asks for a word, the text is over, the slot ends
    after the audio delay + final padding."""
    sink = RecordingSink()
    run_jobs(tiny_model, [job("empty", our_voice(tiny_model, ["voices/alice.wav"]), FixedEntries("e", []), sink)])
    assert sink.result is not None and sink.result.end_step == 2 and sink.words == []
