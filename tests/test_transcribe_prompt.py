"""`dsm transcribe --prompt / --prompt-audio` (experimental) against the reference's prompting.

The reference is ``moshi`` 0.2.13's LMGen with the logits and token hooks of Kyutai's
``stt_from_file_with_prompt_pytorch.py`` (``stt_reference.ScriptPromptHook``) and the script's frame order
(silence prefix, prompt audio, 10 silent frames, audio, suffix), aligned as dsmcli feeds audio. Greedy tokens
must be equal; a free-running run may part only at a text near-tie, or after the two Mimis part at a codec
near-tie (then the reference LM is fed our codes), as in ``test_transcribe.py``.

The prompt texts below are spelled out within a few steps by the tiny fixtures (found by trying words of
their vocabulary; the tests assert it, so a new fixture generation that no longer spells them fails loudly).
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
from fractions import Fraction

import numpy as np
import pytest
import soundfile
import torch
from stt_reference import PROMPT_GAP_FRAMES, reference_tokens

from dsmcli.constants import FRAME_SIZE
from dsmcli.errors import UsageError
from dsmcli.results import Word
from dsmcli.stt import SttModel
from dsmcli.stt.prompt import SttPrompt
from dsmcli.stt.transcriber import FrameFeed, SttJob, TranscribeOptions, Transcriber
from dsmcli.stt.words import tokens_to_words

NEAR_TIE = 1e-4  # top-2 text logit margin
CODEC_NEAR_TIE = 1e-6  # reference distance gap between the two nearest Mimi centroids
EPAD, PAD = 0, 3

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# (fixture, prompt text, prompt audio?) — the text-only prompt on tiny-stt is spelled out after the input's
# time 0 (step 12 > 7), so the "until spelled out" rule of the transcript is exercised too.
CASES = {
    "text": ("tiny_stt", "fo la it en", False),
    "audio": ("tiny_stt", None, True),
    "text+audio": ("tiny_stt", "as Th en", True),
    "text+audio, silence prefix": ("tiny_stt_prefix", "Bo li it", True),
}


class Collect:
    def __init__(self):
        self.events, self.duration, self.error = [], None, None

    def event(self, event):
        self.events.append(event)

    def finish(self, duration):
        self.duration = duration

    def fail(self, error):
        self.error = error

    @property
    def words(self) -> list[Word]:
        return [e for e in self.events if isinstance(e, Word)]


def ours(model: SttModel, audios: list[np.ndarray], prompt: SttPrompt | None, batch_size: int = 1):
    """(sinks, raw tokens per input) of our run of ``audios`` with ``prompt``."""
    sinks = [Collect() for _ in audios]
    tokens: dict[int, list[int]] = {i: [] for i in range(len(audios))}
    jobs = [SttJob(str(i), (lambda a=a: [a[k:k + 7000] for k in range(0, len(a), 7000)]), s)
            for i, (a, s) in enumerate(zip(audios, sinks))]
    Transcriber(model, TranscribeOptions(), batch_size=batch_size, prompt=prompt).run(
        jobs, on_token=lambda job, step, token: tokens[int(job.name)].append(token))
    return sinks, [tokens[i] for i in range(len(audios))]


def first_difference(a, b) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@pytest.fixture(scope="module")
def models(tiny_stt, tiny_stt_prefix):
    repos = {"tiny_stt": tiny_stt, "tiny_stt_prefix": tiny_stt_prefix}
    return {name: (repo, SttModel.load(repo)) for name, repo in repos.items()}


@pytest.fixture(scope="module")
def speech(bria_24k):
    return bria_24k(8.0)


@pytest.fixture(scope="module")
def prompt_audio(loona_24k):
    return loona_24k(1.5)  # 18.75 frames: the last one zero-padded


def frames_of(stt: SttModel, speech: np.ndarray, lead: np.ndarray) -> np.ndarray:
    """The reference script's frames: prefix silence, the prompt audio and its gap, the audio, suffix silence."""
    padded = np.concatenate([speech, np.zeros((-len(speech)) % FRAME_SIZE, np.float32)]).reshape(-1, FRAME_SIZE)
    silence = np.zeros((1, FRAME_SIZE), np.float32)
    timing = stt.timing
    return np.concatenate([silence] * timing.prefix_frames + [lead, padded] + [silence] * timing.suffix_frames)


def our_codes(stt: SttModel, frames: np.ndarray) -> np.ndarray:
    state = stt.mimi.init_state(1)
    return np.stack([stt.mimi.encode_step(torch.from_numpy(f)[None, None], state)[0, :, 0].numpy() for f in frames])


def reference_equal_to_ours(repo, stt, speech, got, text, audio):
    """The reference's tokens for the prompted run, which ``got`` must equal (see the module docstring)."""
    reference = reference_tokens(repo, speech, prompt_text=text, prompt_audio=audio)
    diff = first_difference(got, reference.tokens)
    if diff is None:
        return reference
    if reference.margins[diff] < NEAR_TIE:
        pytest.skip(f"free-running decoding parted at a text near-tie: step {diff}")
    codes = our_codes(stt, frames_of(stt, speech, SttPrompt(text, audio).lead_frames()))
    parted = np.argwhere(codes != reference.codes)
    assert len(parted), f"tokens part at step {diff} (margin {reference.margins[diff]:.3f}) with equal Mimi codes"
    frame, level = (int(v) for v in parted[0])
    gap = float(reference.codec_gaps[frame, level])
    assert frame + reference.first_frame_step <= diff and gap < CODEC_NEAR_TIE, (
        f"tokens part at step {diff}; Mimi codes first part at frame {frame}, codebook {level}, gap {gap}")
    reference = reference_tokens(repo, speech, codes=codes, prompt_text=text, prompt_audio=audio)
    diff = first_difference(got, reference.tokens)
    if diff is not None:
        assert reference.margins[diff] < NEAR_TIE, f"tokens part at step {diff} (reference fed our codes)"
        pytest.skip(f"parted at a codec near-tie, then at a text near-tie (step {diff})")
    return reference


def spelled_at(tokens: list[int], prompt_ids: list[int]) -> int:
    """The step at which the reference's hook rule has emitted the last prompt id (-1 if never)."""
    left = list(prompt_ids)
    for step, token in enumerate(tokens):
        if left and token == left[0]:
            left.pop(0)
            if not left:
                return step
    return -1


@pytest.mark.parametrize("case", list(CASES))
def test_prompted_tokens_and_words_equal_the_reference(case, models, speech, prompt_audio):
    fixture, text, with_audio = CASES[case]
    repo, stt = models[fixture]
    audio = prompt_audio if with_audio else None
    sinks, tokens = ours(stt, [speech], SttPrompt(text, audio))
    got = tokens[0]
    reference = reference_equal_to_ours(repo, stt, speech, got, text, audio)
    lead = (math.ceil(len(prompt_audio) / FRAME_SIZE) + PROMPT_GAP_FRAMES) if with_audio else 0
    timing = stt.timing
    assert len(got) == 1 + timing.prefix_frames + lead + math.ceil(len(speech) / FRAME_SIZE) + timing.suffix_frames
    unprompted = ours(stt, [speech], None)[1][0]
    assert first_difference(got, unprompted) is not None, "the prompt must change the tokens"
    # The transcript: words of the reference's tokens with the prompt region's text hidden, timed from the input.
    offset = stt.timing.time_offset + Fraction(lead) / Fraction(25, 2)
    first_step = math.ceil(offset * Fraction(25, 2))
    ids = [] if text is None else stt.tokenizer.encode(text)
    done = spelled_at(got, ids) if ids else -1
    if ids:
        assert reference.prompt_left == 0 and done >= 0, "the fixture must spell the whole prompt"
        assert [t for t in got[: done + 1] if t not in (EPAD, PAD)] == ids, "only the prompt, then pads, until spelled"
    hidden = [PAD if (step < first_step or step <= done) and t not in (EPAD, PAD) else t for step, t in enumerate(got)]
    assert any(t > PAD for t in got[:first_step]), "the prompt region must hold text to hide"
    expected = tokens_to_words(hidden, stt.tokenizer, end_of_padding_id=EPAD, pad_id=PAD, eos_id=stt.eos_id,
                               time_offset_seconds=offset)
    words = sinks[0].words
    assert len(words) >= 5
    assert [(w.text, w.start, w.end) for w in words] == [(w.text, w.start, w.end) for w in expected]
    assert sinks[0].duration == pytest.approx(len(speech) / 24000)


def test_text_prompt_is_forced_until_spelled(models, speech):
    """Without the hooks the tiny model writes other text at the start; with them, only the prompt's ids and pads
    (the script's hook rule), and the pads in between are free."""
    _, stt = models["tiny_stt"]
    text = CASES["text"][1]
    ids = stt.tokenizer.encode(text)
    _, tokens = ours(stt, [speech], SttPrompt(text))
    done = spelled_at(tokens[0], ids)
    head = tokens[0][: done + 1]
    assert [t for t in head if t not in (EPAD, PAD)] == ids and len(head) > len(ids)
    unprompted = ours(stt, [speech], None)[1][0]
    assert [t for t in unprompted[: done + 1] if t not in (EPAD, PAD)] != ids


def test_prompt_audio_goes_after_the_silence_prefix_with_ten_silent_frames(prompt_audio):
    lead = SttPrompt(audio=prompt_audio).lead_frames()
    prompt_frames = math.ceil(len(prompt_audio) / FRAME_SIZE)
    assert lead.shape == (prompt_frames + 10, FRAME_SIZE)
    audio = np.linspace(-0.5, 0.5, 3 * FRAME_SIZE + 100, dtype=np.float32)
    feed = FrameFeed([audio[:2500], audio[2500:]], prefix=2, suffix=3, lead=lead)
    frames = []
    while (frame := feed.next_frame()) is not None:
        frames.append(frame)
    frames = np.stack(frames)
    assert len(frames) == 2 + prompt_frames + 10 + 4 + 3
    assert not frames[:2].any()  # silence prefix
    flat_prompt = frames[2: 2 + prompt_frames].reshape(-1)
    np.testing.assert_array_equal(flat_prompt[: len(prompt_audio)], prompt_audio)
    assert not flat_prompt[len(prompt_audio):].any()  # the prompt's last frame is zero-padded
    assert not frames[2 + prompt_frames: 12 + prompt_frames].any()  # the 0.8 s gap
    np.testing.assert_array_equal(frames[12 + prompt_frames:][:4].reshape(-1)[: len(audio)], audio)
    assert not frames[-3:].any()
    assert feed.audio_samples == len(audio)  # the prompt is not the input's audio


def test_batched_prompted_inputs_equal_single_runs(models, bria_24k, loona_24k, prompt_audio):
    """Each slot spells the prompt from its own first step; a slot reused by a third input starts over."""
    _, stt = models["tiny_stt"]
    prompt = SttPrompt(CASES["text+audio"][1], prompt_audio)
    audios = [bria_24k(3.0), loona_24k(5.0, offset=2.0), bria_24k(2.0, offset=10.0)]
    single = [ours(stt, [a], prompt) for a in audios]
    sinks, batched = ours(stt, audios, prompt, batch_size=2)
    assert batched == [tokens[0] for _, tokens in single]
    timed = [[(w.text, w.start, w.end) for w in sink.words] for sink in sinks]
    assert timed == [[(w.text, w.start, w.end) for w in s[0].words] for s, _ in single] and timed[0]


def test_prompt_text_the_vocabulary_cannot_spell_is_refused(models):
    _, stt = models["tiny_stt"]
    with pytest.raises(UsageError, match="cannot spell Ω") as error:
        Transcriber(stt, prompt=SttPrompt("fo Ω la"))
    assert "la" not in str(error.value).split("spell", 1)[1].split(";")[0]
    with pytest.raises(UsageError, match="prompt is empty"):
        SttPrompt("  ")


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def files(tmp_path, speech, prompt_audio):
    talk, loonah = tmp_path / "talk.wav", tmp_path / "loonah.wav"
    soundfile.write(talk, speech, 24000, subtype="FLOAT")
    soundfile.write(loonah, prompt_audio, 24000, subtype="FLOAT")
    return talk, loonah


def test_cli_writes_the_prompted_words(models, tiny_stt, speech, prompt_audio, files, tmp_path, capfd):
    from dsmcli.cli import main

    _, stt = models["tiny_stt"]
    text = CASES["text+audio"][1]
    sinks, _ = ours(stt, [speech], SttPrompt(text, prompt_audio))
    expected = sinks[0].words
    talk, loonah = files
    capfd.readouterr()
    main(["transcribe", str(talk), "-m", tiny_stt, "--prompt", text, "--prompt-audio", str(loonah),
          "-f", "json", "-o", f"{tmp_path / 'out'}/"])
    assert capfd.readouterr() == ("", "")
    data = json.loads((tmp_path / "out" / "talk.json").read_text())
    words = [w for seg in data["segments"] for w in seg["words"]]
    assert [w["word"] for w in words] == [w.text for w in expected] and len(words) >= 5
    assert [w["start"] for w in words] == [round(w.start, 2) for w in expected]


def test_cli_prompt_with_stdin(tiny_stt, models, speech, prompt_audio, files, run_dsm):
    _, stt = models["tiny_stt"]
    text = CASES["text+audio"][1]
    sinks, _ = ours(stt, [speech], SttPrompt(text, prompt_audio))
    talk, loonah = files
    proc = run_dsm("transcribe", "-", "-m", tiny_stt, "--prompt", text, "--prompt-audio", loonah, "-f", "jsonl",
                   input=talk.read_bytes(), env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr.decode()
    events = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [e["text"] for e in events if e["type"] == "Word"] == [w.text.strip() for w in sinks[0].words]


@pytest.mark.parametrize("bad, code, message", [
    ("missing.wav", 4, "--prompt-audio {path}: no such file"),
    ("notes.wav", 4, "--prompt-audio {path}: "),  # text, not audio
    ("-", 2, "--prompt-audio needs a file"),
])
def test_cli_bad_prompt_audio_is_one_line_before_the_model_loads(bad, code, message, files, tmp_path, capfd):
    from dsmcli.cli import main

    talk, _ = files
    (tmp_path / "notes.wav").write_text("not audio at all\n" * 50)
    bad = bad if bad == "-" else tmp_path / bad
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # an unknown model: the prompt is checked before any load
        main(["transcribe", str(talk), "-m", "no-such-model", "--prompt-audio", str(bad), "-o", str(tmp_path / "o")])
    out, err = capfd.readouterr()
    assert exit_info.value.code == code
    assert out == "" and err.count("\n") == 1 and err.startswith("dsm: error: " + message.format(path=bad))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("prompt, message", [
    ("  ", "--prompt is empty"),
    ("fo Ω", "--prompt: the model's vocabulary cannot spell Ω"),
])
def test_cli_bad_prompt_text_is_a_usage_error(prompt, message, tiny_stt, files, tmp_path, capfd):
    from dsmcli.cli import main

    talk, _ = files
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["transcribe", str(talk), "-m", tiny_stt, "--prompt", prompt, "-o", str(tmp_path / "o.txt")])
    out, err = capfd.readouterr()
    assert exit_info.value.code == 2
    assert out == "" and err.count("\n") == 1 and err.startswith(f"dsm: error: {message}")
    assert not (tmp_path / "o.txt").exists()


def test_microphone_opens_after_the_prompt_and_gets_the_prompted_words(models, tiny_stt, bria_24k, prompt_audio,
                                                                        tmp_path):
    """With --mic the prompt's frames are fed first; the sound card opens when the input's first frame is needed,
    and what it hears is transcribed as the same samples from a file with the same prompt."""
    from dsmcli.commands import transcribe_run as run
    from dsmcli.outputs import WriterOptions
    from dsmcli.outputs.segments import SegmentOptions

    _, stt = models["tiny_stt"]
    audio = bria_24k(4.0)  # 50 whole blocks
    steps: list[int] = []

    class CountingMic(FakeMicStream):
        AUDIO, opened = audio, []

        def start(self):
            CountingMic.opened.append(len(steps))
            super().start()

    text = CASES["text+audio"][1]
    request = run.Request(
        sources=[run.MIC], formats=["jsonl"], output=str(tmp_path / "mic.jsonl"), force=False, model=tiny_stt,
        device=torch.device("cpu"), dtype=torch.float32, batch_size=1, raw=False, rate=None, channels=None,
        audio_device=None, options=TranscribeOptions(), writer_options=WriterOptions(),
        segment_options=SegmentOptions(), progress=False, mic_factory=CountingMic,
        prompt_text=text, prompt_audio=str(_wav(tmp_path / "loonah.wav", prompt_audio)))
    result = run.execute(request, observer=lambda source, samples: steps.append(samples))
    assert result.exit_code == 130 and not result.errors
    lead = SttPrompt(audio=prompt_audio).lead_frames()
    assert CountingMic.opened == [stt.timing.prefix_frames + len(lead)]  # steps that encoded prefix and prompt
    jsonl = (tmp_path / "mic.jsonl").read_text()
    expected = ours(stt, [audio], SttPrompt(text, prompt_audio))[0][0].words
    assert jsonl_words(jsonl) == [(w.text.strip(), round(w.start, 3), round(w.end, 3)) for w in expected] and expected
    assert json.loads(jsonl.splitlines()[-1])["duration"] == 4.0  # the input's audio, not the prompt's


class FakeMicStream:
    """A sounddevice.InputStream stand-in: on start(), a thread delivers ``AUDIO`` in 1920-sample blocks through
    the callback, then presses Ctrl-C (SIGINT to this process)."""

    AUDIO = np.zeros(0, dtype=np.float32)

    def __init__(self, *, samplerate, blocksize, device, channels, dtype, callback, **_):
        assert (samplerate, blocksize, channels, dtype) == (24000, FRAME_SIZE, 1, "float32")
        self.callback, self.active = callback, True
        self.thread = threading.Thread(target=self._play, daemon=True)

    def _play(self):
        for start in range(0, len(self.AUDIO), FRAME_SIZE):
            self.callback(self.AUDIO[start: start + FRAME_SIZE, None].copy(), FRAME_SIZE, None, None)
        os.kill(os.getpid(), signal.SIGINT)

    def start(self):
        self.thread.start()

    def stop(self):
        self.thread.join()

    def close(self):
        self.active = False


def jsonl_words(text: str) -> list[tuple[str, float, float]]:
    events = [json.loads(line) for line in text.splitlines()]
    starts = [(e["text"], e["start_time"]) for e in events if e["type"] == "Word"]
    ends = [e["stop_time"] for e in events if e["type"] == "EndWord"]
    return [(text, start, end) for (text, start), end in zip(starts, ends)]


def _wav(path, audio):
    soundfile.write(path, audio, 24000, subtype="FLOAT")
    return path
