"""The generator API (``Transcriber.transcribe``, ``Synthesizer.synthesize`` / ``events``) on the tiny fixtures:
the same words, times and samples as the commands (``dsm transcribe``, ``dsm speak``) write, since both run the
same step (``SttBatch`` / ``TtsBatch``) under the same scheduler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch

from dsmcli.audio.sinks import to_pcm16
from dsmcli.bench.paths import SttRunner
from dsmcli.bench.models import load_bench_model
from dsmcli.errors import InputError
from dsmcli.outputs.jsonfmt import JSONL_TIME_DECIMALS
from dsmcli.results import EndOfTurn, Word
from dsmcli.stt import SttModel
from dsmcli.stt.options import TranscribeOptions
from dsmcli.stt.transcriber import Transcriber
from dsmcli.tts.model import SpeakOptions, TtsModel
from dsmcli.tts.synthesizer import AudioChunk, Synthesizer

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TEXT = "Hello there, this is a small test of the generator interface."
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def stt_model(tiny_stt) -> SttModel:
    return SttModel.load(tiny_stt)


@pytest.fixture(scope="module")
def tts_model(tiny_tts, tiny_voices) -> TtsModel:
    return TtsModel.load(tiny_tts, voice_repo=tiny_voices)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory, bria_24k) -> str:
    path = tmp_path_factory.mktemp("api") / "clip.wav"
    soundfile.write(path, bria_24k(5.0), 24000, subtype="FLOAT")
    return str(path)


def _timed(events) -> list[tuple[str, float, float]]:
    """Texts and times (probabilities differ by float32 noise between a fresh model and a reused slot)."""
    return [(w.text, w.start, w.end) for w in events]


def _rounded(words: list[Word]) -> list[tuple[str, float, float]]:
    return [(w.text.strip(), round(w.start, JSONL_TIME_DECIMALS), round(w.end, JSONL_TIME_DECIMALS)) for w in words]


def _jsonl_words(text: str) -> list[tuple[str, float, float]]:
    events = [json.loads(line) for line in text.splitlines()]
    starts = [(e["text"], e["start_time"]) for e in events if e["type"] == "Word"]
    ends = [e["stop_time"] for e in events if e["type"] == "EndWord"]
    return [(t, s, e) for (t, s), e in zip(starts, ends)]


def test_transcribe_gives_the_words_and_times_of_dsm_transcribe(stt_model, tiny_stt, clip_file, run_dsm):
    proc = run_dsm("transcribe", clip_file, "--model", tiny_stt, "-f", "jsonl", "--vad", env=SINGLE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    events, info = Transcriber(stt_model, TranscribeOptions(vad=True)).transcribe(clip_file)
    assert info.model == stt_model.name and info.duration == pytest.approx(5.0)
    events = list(events)
    words = [e for e in events if isinstance(e, Word)]
    assert len(words) >= 5 and _rounded(words) == _jsonl_words(proc.stdout.decode())
    assert all(isinstance(e, (Word, EndOfTurn)) for e in events)
    assert info.duration == pytest.approx(5.0)


def test_transcribe_takes_arrays_and_chunks_alike(stt_model, bria_24k):
    audio = bria_24k(4.0)
    transcriber = Transcriber(stt_model)
    whole, info = transcriber.transcribe(audio)
    whole = _timed(whole)
    chunks, _ = transcriber.transcribe(audio[i:i + 5000] for i in range(0, len(audio), 5000))
    assert len(whole) >= 3 and _timed(chunks) == whole and info.duration == pytest.approx(4.0)
    with pytest.raises(InputError):
        transcriber.transcribe(np.array([0.0, np.nan], dtype=np.float32))


def test_two_iterators_share_the_batch_and_an_abandoned_one_frees_its_slot(stt_model, bria_24k, loona_24k):
    first, second = bria_24k(3.0), loona_24k(3.0)
    alone = [list(Transcriber(stt_model).transcribe(a)[0]) for a in (first, second)]
    shared = Transcriber(stt_model, batch_size=2)
    a, b = shared.transcribe(first)[0], shared.transcribe(second)[0]
    got_a = [next(a)]  # both streams now step together
    got_b = list(b)
    got_a += list(a)
    assert _timed(got_a) == _timed(alone[0]) and _timed(got_b) == _timed(alone[1])
    one = Transcriber(stt_model, batch_size=1)
    abandoned = one.transcribe(first)[0]
    next(abandoned)
    abandoned.close()  # gives the only slot back
    assert [w.text for w in one.transcribe(second)[0]] == [w.text for w in alone[1]]


def test_synthesize_gives_the_samples_of_dsm_speak(tts_model, tiny_tts, tiny_voices, tmp_path, run_dsm):
    out = tmp_path / "speak.wav"
    proc = run_dsm("speak", "--text", TEXT, "--model", tiny_tts, "--voice-repo", tiny_voices, "--voice",
                   "voices/alice.wav", "--seed", "7", "-o", out, "--json", env=SINGLE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    synthesizer = Synthesizer(tts_model, SpeakOptions(seed=7))
    events = list(synthesizer.events(TEXT, voice="voices/alice.wav"))
    pcm = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    written = out.read_bytes()
    assert to_pcm16(pcm) == written[len(written) - 2 * len(pcm):]  # the WAV's data chunk, byte for byte
    words = [e for e in events if isinstance(e, Word)]
    document = json.loads(out.with_suffix(".json").read_text())
    json_words = [w for segment in document["segments"] for w in segment["words"]]
    assert [w.text for w in words] == [w["word"] for w in json_words] and len(words) == len(TEXT.split())
    again = np.concatenate([c.pcm for c in synthesizer.synthesize(TEXT, voice="voices/alice.wav")])
    assert np.array_equal(again, pcm)  # a lone stream replays the seed


def test_synthesize_takes_text_pieces_as_they_come(tts_model):
    synthesizer = Synthesizer(tts_model, SpeakOptions(temperature=0.0))
    whole = np.concatenate([c.pcm for c in synthesizer.synthesize(TEXT, voice="voices/bob.wav")])
    pieces = (TEXT[i:i + 3] for i in range(0, len(TEXT), 3))  # split inside words, as an LLM's tokens are
    streamed = np.concatenate([c.pcm for c in synthesizer.synthesize(pieces, voice="voices/bob.wav")])
    assert np.array_equal(streamed, whole)
    with pytest.raises(InputError):
        synthesizer.synthesize("  ", voice="voices/bob.wav")
    with pytest.raises(InputError):
        list(synthesizer.synthesize(iter(["", " "]), voice="voices/bob.wav"))


def test_bench_stt_path_runs_the_transcriber_step_on_random_weights(tiny_stt):
    model = load_bench_model(tiny_stt, torch.device("cpu"), torch.float32, random_weights=True, seed=2)
    runner = SttRunner(model, 2, seed=0)
    runner.start()
    for _ in range(runner.first_output_steps + 5):
        runner.step()
    assert runner.scheduler.steps == runner.first_output_steps + 5
    assert all(slot is not None and slot.step == runner.first_output_steps + 5 for slot in runner.batch.slots)
