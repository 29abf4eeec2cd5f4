"""`dsm transcribe` end to end on the tiny STT fixture, against the reference's tokens."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import numpy as np
import pytest
import soundfile
import torch
from stt_reference import reference_tokens

from dsmcli.constants import FRAME_SIZE
from dsmcli.results import EndOfTurn, Word
from dsmcli.stt import SttModel
from dsmcli.stt.transcriber import SttJob, TranscribeOptions, Transcriber
from dsmcli.stt.words import tokens_to_words

SECONDS = 20.0
NEAR_TIE = 1e-4  # top-2 text logit margin
CODEC_NEAR_TIE = 1e-6  # reference distance gap between the two nearest Mimi centroids

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class Collect:
    def __init__(self):
        self.events, self.duration, self.error = [], None, None

    def event(self, event):
        self.events.append(event)

    def finish(self, duration):
        self.duration = duration

    def fail(self, error):
        self.error = error


def ours(model: SttModel, audios: list[np.ndarray], batch_size: int = 1, **options):
    sinks = [Collect() for _ in audios]
    tokens: dict[int, list[int]] = {i: [] for i in range(len(audios))}
    jobs = [SttJob(str(i), (lambda a=a: [a[k:k + 7000] for k in range(0, len(a), 7000)]), s)
            for i, (a, s) in enumerate(zip(audios, sinks))]
    Transcriber(model, TranscribeOptions(**options), batch_size=batch_size).run(
        jobs, on_token=lambda job, step, token: tokens[int(job.name)].append(token))
    return sinks, tokens


@pytest.fixture(scope="module")
def stt(tiny_stt):
    return SttModel.load(tiny_stt)


@pytest.fixture(scope="module")
def speech(bria_24k):
    return bria_24k(SECONDS)


@pytest.fixture(scope="module")
def reference(tiny_stt, speech):
    return reference_tokens(tiny_stt, speech)


@pytest.fixture(scope="module")
def our_run(stt, speech):
    """(sink, tokens) of our transcription of ``speech`` (shared by the parity and the CLI tests)."""
    sinks, tokens = ours(stt, [speech])
    return sinks[0], tokens[0]


def first_difference(a, b) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def our_codes(stt: SttModel, speech: np.ndarray) -> np.ndarray:
    """``[frames, n_q]``: our Mimi's codes of the frames the STT loop encodes (prefix, audio, suffix)."""
    timing = stt.timing
    padded = np.concatenate([speech, np.zeros((-len(speech)) % FRAME_SIZE, np.float32)])
    silence = np.zeros((1, FRAME_SIZE), np.float32)
    frames = [silence] * timing.prefix_frames + [padded.reshape(-1, FRAME_SIZE)] + [silence] * timing.suffix_frames
    state = stt.mimi.init_state(1)
    return np.stack([stt.mimi.encode_step(torch.from_numpy(f)[None, None], state)[0, :, 0].numpy()
                     for f in np.concatenate(frames)])


def check_divergence(stt, tiny_stt, speech, reference, step: int) -> list[int]:
    """Tokens part from the reference at ``step``: allowed at a text near-tie (then skip), or after our Mimi's
    codes part from the reference's at a codec near-tie (a float tie of two centroid distances). In that case
    return the reference LM's tokens driven by *our* codes, which ours must then equal."""
    if reference.margins[step] < NEAR_TIE:
        pytest.skip(f"free-running decoding parted at a text near-tie: step {step}, margin {reference.margins[step]:.2e}")
    codes = our_codes(stt, speech)
    parted = np.argwhere(codes != reference.codes)
    assert len(parted), f"tokens part at step {step} (margin {reference.margins[step]:.3f}) with equal Mimi codes"
    frame, level = (int(v) for v in parted[0])
    gap = float(reference.codec_gaps[frame, level])
    assert frame + reference.first_frame_step <= step and gap < CODEC_NEAR_TIE, (
        f"tokens part at step {step}; Mimi codes first part at frame {frame}, codebook {level}, reference gap {gap}")
    return reference_tokens(tiny_stt, speech, codes=codes).tokens


def test_tokens_and_words_equal_the_reference(stt, tiny_stt, speech, reference, our_run):
    sink, got = our_run
    ref_tokens = reference.tokens
    assert len(got) == len(ref_tokens) == 1 + int(np.ceil(len(speech) / FRAME_SIZE)) + stt.timing.suffix_frames
    diff = first_difference(got, ref_tokens)
    if diff is not None:  # only at a near-tie, and then against the reference LM fed with our codes
        ref_tokens = check_divergence(stt, tiny_stt, speech, reference, diff)
        diff = first_difference(got, ref_tokens)
        if diff is not None:
            assert reference.margins[diff] < NEAR_TIE, f"tokens part at step {diff} (fed our codes)"
            pytest.skip(f"parted at a codec near-tie, then at a text near-tie (step {diff})")
    kinds = set(got)
    assert 0 in kinds and 3 in kinds and any(t > 3 for t in kinds), "fixture must exercise word boundaries"
    expected = tokens_to_words(ref_tokens, stt.tokenizer, end_of_padding_id=0, pad_id=3, eos_id=stt.eos_id,
                               time_offset_seconds=Fraction(1, 2))
    words = [e for e in sink.events if isinstance(e, Word)]
    assert [(w.text, w.start, w.end) for w in words] == [(w.text, w.start, w.end) for w in expected]
    assert len(words) >= 5
    assert sink.duration == pytest.approx(len(speech) / 24000)
    # each word holds its text tokens' log-probabilities (JSON avg_logprob), the reference's at those steps
    text_steps = [step for step, token in enumerate(ref_tokens) if token > 3]
    ours_logprobs = [value for w in words for value in w.token_logprobs]
    assert len(ours_logprobs) == len(text_steps) and all(value <= 0 for value in ours_logprobs)
    # the free-running reference's logits are ours until its Mimi codes part from ours (a codec near-tie)
    codes_part = np.argwhere(our_codes(stt, speech) != reference.codes)
    parted = None if not len(codes_part) else int(codes_part[0][0]) + reference.first_frame_step
    same = [k for k, step in enumerate(text_steps) if parted is None or step < parted]
    assert len(same) >= 10, "the fixture must give text tokens before any near-tie"
    assert [ours_logprobs[k] for k in same] == pytest.approx([reference.logprobs[text_steps[k]] for k in same],
                                                             abs=1e-4)


def test_batch_slots_equal_single_runs(stt, bria_24k, loona_24k):
    audios = [bria_24k(6.0), loona_24k(9.0), bria_24k(4.0, offset=10.0)]
    single = [ours(stt, [a])[1][0] for a in audios]
    # two slots for three inputs: the third reuses a freed slot (its state reset), started late
    _, batched = ours(stt, audios, batch_size=2)
    assert [batched[i] for i in range(3)] == single


def test_vad_end_of_turn_events(stt, speech):
    sinks, _ = ours(stt, [speech], vad=True, vad_threshold=0.2)
    events = sinks[0].events
    turns = [e for e in events if isinstance(e, EndOfTurn)]
    assert turns, "the fixture's VAD head should cross a 0.2 threshold on 20 s of speech"
    assert all(0.2 < t.probability <= 1 for t in turns)
    times = [e.time for e in turns]
    assert times == sorted(times)


def test_cli_outputs_hold_the_words_of_the_library_run(tiny_stt, speech, our_run, tmp_path, capfd):
    """Every format the CLI writes holds the words of ``Transcriber`` (which the test above ties to the
    reference), with each format's rounding."""
    from dsmcli.cli import main

    wav = tmp_path / "talk.wav"
    soundfile.write(wav, speech, 24000, subtype="FLOAT")
    capfd.readouterr()
    main(["transcribe", str(wav), "-m", tiny_stt, "-f", "json", "-f", "srt", "-f", "vtt", "-f", "tsv",
          "-f", "txt", "-f", "jsonl", "-o", f"{tmp_path / 'out'}/"])  # in this process: no start-up cost
    assert capfd.readouterr() == ("", "")
    expected = [e for e in our_run[0].events if isinstance(e, Word)]
    assert len(expected) >= 5
    data = json.loads((tmp_path / "out" / "talk.json").read_text())
    words = [w for seg in data["segments"] for w in seg["words"]]
    assert [w["word"] for w in words] == [w.text for w in expected]
    assert [w["start"] for w in words] == [round(w.start, 2) for w in expected]
    assert data["text"] == "".join(w.text for w in expected)
    cursor = 0
    for segment in data["segments"]:  # avg_logprob: the mean over the segment's text tokens; no figure: null
        in_segment, cursor = expected[cursor : cursor + len(segment["words"])], cursor + len(segment["words"])
        values = [value for w in in_segment for value in w.token_logprobs]
        assert segment["avg_logprob"] == pytest.approx(sum(values) / len(values)) and segment["no_speech_prob"] is None
    srt = (tmp_path / "out" / "talk.srt").read_text()
    stamps = re.findall(r"^(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)$", srt, re.M)
    assert len(stamps) == len(data["segments"])
    first = expected[0].start
    assert stamps[0][0] == f"00:00:{int(first):02d},{round((first % 1) * 1000):03d}"
    vtt = (tmp_path / "out" / "talk.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n") and re.search(r"^\d\d:\d\d\.\d\d\d --> \d\d:\d\d\.\d\d\d$", vtt, re.M)
    tsv = (tmp_path / "out" / "talk.tsv").read_text().splitlines()
    assert tsv[0] == "start\tend\ttext" and all(re.match(r"^\d+\t\d+\t", row) for row in tsv[1:])
    events = [json.loads(line) for line in (tmp_path / "out" / "talk.jsonl").read_text().splitlines()]
    assert [e["text"] for e in events if e["type"] == "Word"] == [w.text.strip() for w in expected]
    txt = (tmp_path / "out" / "talk.txt").read_text()
    assert "".join(txt.split()) == "".join("".join(w.text for w in expected).split())
