"""`--mic` / `--play` check the sound layer (PortAudio, the device) before any model loads: one line, exit 1.

In this process through ``dsmcli.cli.main``; the model loaders are replaced by a function that fails the test,
so a check that comes after loading shows up as that failure instead of the expected one-line error.
"""

from __future__ import annotations

import builtins
import sys

import numpy as np
import pytest
import soundfile

from dsmcli.cli import main


def _dsm(capfd, *args) -> tuple[int, str, str]:
    capfd.readouterr()
    try:
        main([str(arg) for arg in args])
        code = 0
    except SystemExit as exited:
        code = exited.code if isinstance(exited.code, int) else 1
    out, err = capfd.readouterr()
    return code, out, err


def _no_model_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the sound device was checked")


@pytest.fixture
def no_model_load(monkeypatch):
    monkeypatch.setattr("dsmcli.stt.SttModel.load", _no_model_load)
    monkeypatch.setattr("dsmcli.commands.speak_run.load_checkpoint", _no_model_load)
    monkeypatch.setattr("dsmcli.commands.speak_run.TtsModel.from_checkpoint", _no_model_load)


@pytest.fixture
def portaudio_missing(monkeypatch):
    """What `import sounddevice` does without libportaudio: OSError("PortAudio library not found")."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)


def _one_line(err: str, *needles: str) -> None:
    assert err.count("\n") == 1 and err.startswith("dsm: error: ") and "Traceback" not in err, err
    assert all(needle in err for needle in needles), err


@pytest.mark.parametrize("args", [
    ["transcribe", "--mic", "-m", "dsm-test/tiny-stt"],
    ["speak", "--play", "--text", "hello", "-m", "dsm-test/tiny-tts"],
    ["dialog", "-", "--play", "-m", "dsm-test/tiny-tts"],
], ids=lambda args: args[0])
def test_portaudio_missing_is_found_before_the_model_loads(capfd, args, no_model_load, portaudio_missing):
    code, out, err = _dsm(capfd, *args)
    assert (code, out) == (1, "")
    _one_line(err, "apt-get install libportaudio2")


@pytest.mark.parametrize("args, needle", [
    (["transcribe", "--mic", "--input-device", "no such mic"], "cannot use the microphone 'no such mic'"),
    (["speak", "--play", "--text", "hello", "--output-device", "no such speaker"],
     "cannot use the audio output 'no such speaker'"),
], ids=["mic", "play"])
def test_unknown_device_is_found_before_the_model_loads(capfd, args, needle, no_model_load, monkeypatch):
    pytest.importorskip("sounddevice")
    monkeypatch.delenv("PULSE_SERVER", raising=False)
    code, out, err = _dsm(capfd, *args, "-m", "dsm-test/tiny-stt" if args[0] == "transcribe" else "dsm-test/tiny-tts")
    assert (code, out) == (1, "")
    _one_line(err, needle)


def test_device_options_need_mic_or_play_and_a_free_path(capfd, tmp_path, no_model_load, monkeypatch):
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, np.zeros(2400, np.float32), 24000)
    code, _, err = _dsm(capfd, "transcribe", clip, "--save-audio", tmp_path / "heard.wav")
    assert code == 2
    _one_line(err, "--save-audio records the microphone")
    code, _, err = _dsm(capfd, "transcribe", clip, "--input-device", "1")
    assert code == 2
    _one_line(err, "--input-device picks the microphone: use it with --mic")
    code, _, err = _dsm(capfd, "speak", "--text", "hi", "-o", tmp_path / "hi.wav", "--device-out", "pulse")
    assert code == 2
    _one_line(err, "--output-device picks the speakers: use it with --play")
    monkeypatch.setattr("dsmcli.audio.live.check_device", lambda *args, **kwargs: None)
    code, _, err = _dsm(capfd, "transcribe", "--mic", "--save-audio", clip)
    assert code == 1
    _one_line(err, "clip.wav exists (use --force to overwrite)")
    code, _, err = _dsm(capfd, "transcribe", "--mic", "--save-audio", tmp_path / "heard.txt")
    assert code == 2
    _one_line(err, "use a .wav")


class _FinishingMic:
    """A sounddevice.InputStream stand-in: start() delivers ``AUDIO`` in blocks, then the stream ends."""

    AUDIO = np.zeros(0, dtype=np.float32)

    def __init__(self, *, callback, blocksize, **kwargs):
        self.callback, self.block, self.active = callback, blocksize, True

    def start(self):
        for start in range(0, len(self.AUDIO), self.block):
            self.callback(self.AUDIO[start : start + self.block, None].copy(), self.block, None, None)
        self.active = False

    def stop(self):
        pass

    def close(self):
        pass


def test_save_audio_writes_exactly_what_was_transcribed(tiny_stt, bria_24k, tmp_path, monkeypatch):
    import json

    import torch

    from dsmcli.commands import transcribe_run as run
    from dsmcli.outputs import WriterOptions
    from dsmcli.outputs.segments import SegmentOptions
    from dsmcli.stt.transcriber import TranscribeOptions

    audio = bria_24k(2.4)  # 30 blocks
    monkeypatch.setattr(_FinishingMic, "AUDIO", audio)
    heard = tmp_path / "heard.wav"
    request = run.Request(
        sources=[run.MIC], formats=["jsonl"], output=str(tmp_path / "mic.jsonl"), force=False, model=tiny_stt,
        device=torch.device("cpu"), dtype=torch.float32, batch_size=1, raw=False, rate=None, channels=None,
        audio_device=None, options=TranscribeOptions(), writer_options=WriterOptions(),
        segment_options=SegmentOptions(), progress=False, mic_factory=_FinishingMic, save_audio=str(heard))
    assert run.execute(request).exit_code == 0
    saved, rate = soundfile.read(heard, dtype="int16")
    assert rate == 24000 and saved.shape == audio.shape
    np.testing.assert_array_equal(saved, np.clip(np.rint(audio * 32768), -32768, 32767).astype(np.int16))
    done = json.loads((tmp_path / "mic.jsonl").read_text().splitlines()[-1])
    assert done["type"] == "Done" and done["duration"] == pytest.approx(len(audio) / 24000)
