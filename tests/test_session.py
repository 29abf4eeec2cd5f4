"""The per-task streaming session API (``dsmcli.stt.session``, ``dsmcli.tts.session``) and the shared slot
scheduler: a live stream on a shared batched model gives what ``Transcriber`` / ``Synthesizer`` (the code of
``dsm transcribe`` / ``dsm speak``) give on the same input, whatever else shares the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsmcli.engine.scheduler import SchedulerFull, StreamEnd
from dsmcli.errors import DsmError, InputError
from dsmcli.results import Word
from dsmcli.tts.model import SpeakOptions, TtsModel
from dsmcli.stt import SttModel
from dsmcli.stt.session import Marker, SttEngine, VadStep
from dsmcli.tts.session import AudioChunk, TtsEngine
from test_speak_harness import fixed, job, our_voice, RecordingSink, run_jobs
from test_transcribe_cli import transcribe_array

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TIMEOUT = 120.0
TEXT = "Hello there, this is a small test of the speech server."


@pytest.fixture(scope="module")
def stt_model(tiny_stt) -> SttModel:
    return SttModel.load(tiny_stt)


@pytest.fixture(scope="module")
def clips(bria_24k, loona_24k) -> list[np.ndarray]:
    return [bria_24k(4.0), loona_24k(3.0), bria_24k(3.0, 5.0)]


@pytest.fixture(scope="module")
def expected(stt_model, clips) -> list[list[Word]]:
    """What ``dsm transcribe`` (``Transcriber``, batch 1) gives for each clip."""
    return [transcribe_array(stt_model, clip) for clip in clips]


def timed(words: list[Word]) -> list[tuple[str, float, float]]:
    return [(w.text, w.start, w.end) for w in words]


def assert_same_words(got: list[Word], want: list[Word]) -> None:
    """Same texts and times; probabilities within float32 noise (the batch size changes the summation order)."""
    assert timed(got) == timed(want)
    assert np.allclose([w.probability for w in got], [w.probability for w in want], rtol=1e-5, atol=1e-7)


def stream_clip(engine: SttEngine, clip: np.ndarray, chunk: int = 1000, steps: bool = False) -> list[object]:
    stream = engine.open(steps=steps)
    for start in range(0, len(clip), chunk):
        stream.push(clip[start:start + chunk])
    stream.end()
    events = list(stream.events(timeout=TIMEOUT))
    assert stream.backlog_seconds == 0  # every pushed sample went through the model
    return events


def test_a_stream_gives_the_words_of_dsm_transcribe(stt_model, clips, expected):
    with SttEngine(stt_model, batch_size=4) as engine:
        events = stream_clip(engine, clips[0], chunk=777, steps=True)
    assert len(expected[0]) >= 5
    assert_same_words([e for e in events if isinstance(e, Word)], expected[0])
    steps = [e for e in events if isinstance(e, VadStep)]
    timing = stt_model.timing
    frames = timing.prefix_frames + -(-len(clips[0]) // 1920) + timing.suffix_frames
    assert [s.step_idx for s in steps] == list(range(frames + 1))  # one Step per model step, the final one too
    assert all(len(s.prs) == stt_model.config.extra_heads_num_heads and all(0 <= p <= 1 for p in s.prs)
               for s in steps)
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.error is None and end.result == pytest.approx(len(clips[0]) / 24000)


def test_streams_started_at_different_moments_each_give_what_they_give_alone(stt_model, clips, expected):
    with SttEngine(stt_model, batch_size=3) as engine:
        streams = []
        for index, clip in enumerate(clips):  # each starts while the previous ones are halfway through
            stream = engine.open()
            streams.append(stream)
            stream.push(clip[: len(clip) // 2])
            if index:
                streams[index - 1].push(clips[index - 1][len(clips[index - 1]) // 2:])
                streams[index - 1].end()
        streams[-1].push(clips[-1][len(clips[-1]) // 2:])
        streams[-1].end()
        results = [[e for e in s.events(timeout=TIMEOUT) if isinstance(e, Word)] for s in streams]
    for got, want in zip(results, expected):
        assert_same_words(got, want)


def test_a_marker_comes_back_after_the_words_of_the_audio_before_it(stt_model, clips, expected):
    clip = clips[0]
    with SttEngine(stt_model, batch_size=2) as engine:
        stream = engine.open()
        stream.push(clip)
        stream.mark(42)
        stream.push(np.zeros(24000 * 2, dtype=np.float32))  # the client keeps sending silence, as Kyutai's does
        events = []
        for event in stream.events(timeout=TIMEOUT):
            events.append(event)
            if isinstance(event, Marker):
                break
        stream.close()
    assert events[-1] == Marker(42)
    words = [e for e in events if isinstance(e, Word)]
    # the words made final by then (a word is final at the next word boundary), as ``dsm transcribe`` has them
    assert len(words) >= 5 and timed(words) == timed(expected[0])[: len(words)]


def test_a_closed_stream_frees_its_slot_and_the_others_go_on(stt_model, clips, expected):
    with SttEngine(stt_model, batch_size=2) as engine:
        keep = engine.open()
        gone = engine.open()
        gone.push(clips[1][:24000])
        keep.push(clips[0][:24000])
        with pytest.raises(SchedulerFull):
            engine.open()
        gone.close()
        with pytest.raises(DsmError, match="closed"):
            list(gone.events(timeout=TIMEOUT))
        third = engine.open()  # the freed slot
        keep.push(clips[0][24000:])
        keep.end()
        third.push(clips[2])
        third.end()
        assert_same_words([e for e in keep.events(timeout=TIMEOUT) if isinstance(e, Word)], expected[0])
        assert_same_words([e for e in third.events(timeout=TIMEOUT) if isinstance(e, Word)], expected[2])


def test_a_full_engine_queues_up_to_max_waiting_then_refuses(stt_model, clips, expected):
    with SttEngine(stt_model, batch_size=1, max_waiting=1) as engine:
        first, queued = engine.open(), engine.open()
        with pytest.raises(SchedulerFull):
            engine.open()
        for stream, clip in ((queued, clips[1]), (first, clips[0])):  # the queued one's input waits too
            stream.push(clip)
            stream.end()
        assert_same_words([e for e in first.events(timeout=TIMEOUT) if isinstance(e, Word)], expected[0])
        assert_same_words([e for e in queued.events(timeout=TIMEOUT) if isinstance(e, Word)], expected[1])


def test_bad_samples_are_refused_at_the_push(stt_model):
    with SttEngine(stt_model) as engine:
        stream = engine.open()
        with pytest.raises(InputError):
            stream.push(np.array([0.0, np.nan], dtype=np.float32))
        stream.close()


# ----------------------------------------------------------------------------------------------------- TTS


@pytest.fixture(scope="module")
def tts_model(tiny_tts, tiny_voices) -> TtsModel:
    return TtsModel.load(tiny_tts, voice_repo=tiny_voices, dtype=torch.float32)


def speak_stream(engine: TtsEngine, text: str, voice: str = "voices/alice.wav") -> tuple[np.ndarray, list[Word], object]:
    stream = engine.open(voice)
    for word in text.split():  # word by word, as Kyutai's client sends it
        stream.push(word + " ")
    stream.end()
    events = list(stream.events(timeout=TIMEOUT))
    pcm = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    return pcm, [e for e in events if isinstance(e, Word)], events[-1]


@pytest.mark.parametrize("options", [SpeakOptions(temperature=0.0), SpeakOptions(seed=3)], ids=["greedy", "seeded"])
def test_a_tts_stream_gives_the_audio_and_words_of_dsm_speak(tts_model, options):
    sink = RecordingSink()
    run_jobs(tts_model, [job("test", our_voice(tts_model, ["voices/alice.wav"], options),
                             fixed(tts_model, [TEXT], options), sink)], options)
    with TtsEngine(tts_model, options, batch_size=1) as engine:
        for _ in range(2):  # the second request on the same engine replays the seed too
            pcm, words, end = speak_stream(engine, TEXT)
            assert pcm.shape == sink.pcm.shape and np.abs(pcm - sink.pcm).max() <= 1e-6
            assert words == sink.words and len(words) == len(TEXT.split())
            assert isinstance(end, StreamEnd) and end.result.frames == len(sink.chunks)


def test_tts_streams_share_the_batch_and_unknown_voices_are_refused(tts_model):
    options = SpeakOptions(temperature=0.0)
    with TtsEngine(tts_model, options, batch_size=2) as engine:
        alone, _, _ = speak_stream(engine, TEXT)
        first = engine.open("voices/alice.wav")
        second = engine.open("voices/bob.wav")
        for stream, text in ((first, TEXT), (second, "A second voice says something else.")):
            stream.push(text)
            stream.end()
        together = np.concatenate([e.pcm for e in first.events(timeout=TIMEOUT) if isinstance(e, AudioChunk)])
        assert any(isinstance(e, AudioChunk) for e in second.events(timeout=TIMEOUT))
        assert together.shape == alone.shape and np.abs(together - alone).max() <= 1e-4
        for name in ("../voices/alice.wav", "/etc/passwd", "hf://x/y/z", "voices/nobody.wav"):
            with pytest.raises(InputError):
                engine.open(name)


def test_an_audio_prefix_model_streams_what_dsm_speak_gives(tiny_tts_prefix, tiny_voices):
    model = TtsModel.load(tiny_tts_prefix, voice_repo=tiny_voices, dtype=torch.float32)
    options = SpeakOptions(temperature=0.0)
    sink = RecordingSink()
    run_jobs(model, [job("test", our_voice(model, ["voices/alice.wav"], options), fixed(model, [TEXT], options),
                         sink)], options)
    with TtsEngine(model, options, batch_size=2) as engine:
        pcm, words, _ = speak_stream(engine, TEXT)
    assert pcm.shape == sink.pcm.shape and np.abs(pcm - sink.pcm).max() <= 1e-4
    assert [w.text for w in words] == [w.text for w in sink.words]


def test_a_model_with_a_silence_prefix_gives_times_from_the_first_sample(tiny_stt_prefix, clips):
    model = SttModel.load(tiny_stt_prefix)  # stt-2.6b-shaped: 1 s of silence added before the audio, no VAD
    assert model.timing.prefix_frames > 0
    with SttEngine(model, batch_size=2) as engine:
        events = stream_clip(engine, clips[0], steps=True)
    assert not any(isinstance(e, VadStep) for e in events)
    expected = transcribe_array(model, clips[0])
    assert len(expected) >= 3
    assert_same_words([e for e in events if isinstance(e, Word)], expected)
