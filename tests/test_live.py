"""Microphone source / speaker sink with fake PortAudio streams (no device, no PortAudio needed)."""

from __future__ import annotations

import builtins
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from dsmcli.audio import live
from dsmcli.constants import FRAME_SIZE, SAMPLE_RATE
from dsmcli.errors import DeviceError


class FakeStream:
    """Records what a sounddevice stream is asked to do."""

    instances: list[FakeStream] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[str] = []
        self.written: list[np.ndarray] = []
        FakeStream.instances.append(self)

    def start(self):
        self.calls.append("start")

    def stop(self):
        self.calls.append("stop")

    def abort(self):
        self.calls.append("abort")

    def close(self):
        self.calls.append("close")

    def write(self, data):
        self.calls.append("write")
        self.written.append(data.copy())
        return len(self.written) == 2  # pretend the 2nd write underflowed


@pytest.fixture(autouse=True)
def _fresh_instances():
    FakeStream.instances = []


def test_mic_yields_copied_mono_chunks_in_order():
    blocks = [np.random.default_rng(i).standard_normal((FRAME_SIZE, 2)).astype(np.float32) for i in range(3)]
    with live.MicSource(stream_factory=FakeStream) as mic:
        stream = FakeStream.instances[0]
        assert stream.kwargs == {"samplerate": SAMPLE_RATE, "blocksize": FRAME_SIZE, "device": None,
                                 "channels": 1, "dtype": "float32", "callback": mic._callback}
        assert stream.calls == ["start"]
        for index, block in enumerate(blocks):
            buffer = block.copy()
            stream.kwargs["callback"](buffer, FRAME_SIZE, None, "input overflow" if index == 1 else None)
            buffer[:] = 0  # PortAudio reuses its buffer: the source must have copied
        mic.stop()
        chunks = list(mic)
    assert stream.calls == ["start", "stop", "close"]
    assert len(chunks) == 3 and mic.overflows == 1 and not mic.interrupted
    for chunk, block in zip(chunks, blocks):
        assert chunk.dtype == np.float32 and chunk.shape == (FRAME_SIZE,)
        np.testing.assert_array_equal(chunk, block[:, 0])


def test_mic_fed_from_another_thread():
    with live.MicSource(device="USB", rate=16000, block=160, stream_factory=FakeStream) as mic:
        callback = FakeStream.instances[0].kwargs["callback"]
        assert FakeStream.instances[0].kwargs["device"] == "USB"

        def produce():
            for value in range(5):
                callback(np.full((160, 1), value, dtype=np.float32), 160, None, None)
            mic.stop()

        thread = threading.Thread(target=produce)
        thread.start()
        got = [float(chunk[0]) for chunk in mic]
        thread.join()
    assert got == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_mic_ends_when_the_stream_dies(monkeypatch):
    with live.MicSource(stream_factory=FakeStream) as mic:
        stream = FakeStream.instances[0]
        stream.kwargs["callback"](np.ones((FRAME_SIZE, 1), np.float32), FRAME_SIZE, None, None)
        stream.active = False  # sounddevice: the device went away / the stream was stopped
        assert len(list(mic)) == 1  # the queued chunk, then the loop ends instead of waiting forever


def test_mic_ctrl_c_ends_iteration_cleanly(monkeypatch):
    with live.MicSource(stream_factory=FakeStream) as mic:
        FakeStream.instances[0].kwargs["callback"](np.ones((FRAME_SIZE, 1), np.float32), FRAME_SIZE, None, None)
        seen = []
        for chunk in mic:
            seen.append(chunk)

            def interrupt(timeout=None):
                raise KeyboardInterrupt

            monkeypatch.setattr(mic._queue, "get", interrupt)
    assert len(seen) == 1 and mic.interrupted
    assert FakeStream.instances[0].calls == ["start", "stop", "close"]


def test_mic_outside_with_block_and_open_errors():
    with pytest.raises(RuntimeError, match="with"):
        next(iter(live.MicSource(stream_factory=FakeStream)))

    def no_device(**kwargs):
        raise ValueError("No input device matching 'nope'")

    with pytest.raises(DeviceError, match="cannot open the microphone .nope.: No input device"):
        with live.MicSource(device="nope", stream_factory=no_device):
            pass

    class FailsToStart(FakeStream):
        def start(self):
            raise OSError("Invalid sample rate")

    with pytest.raises(DeviceError, match="Invalid sample rate"):
        with live.MicSource(stream_factory=FailsToStart):
            pass
    assert FakeStream.instances[-1].calls == ["close"]


def test_speaker_writes_drains_on_close():
    chunks = [np.linspace(-2, 2, FRAME_SIZE, dtype=np.float64), np.zeros(FRAME_SIZE, np.float32)]
    with live.SpeakerSink(stream_factory=FakeStream) as sink:
        for chunk in chunks:
            sink.write(chunk)
    stream = FakeStream.instances[0]
    assert {k: v for k, v in stream.kwargs.items()} == {"samplerate": SAMPLE_RATE, "blocksize": FRAME_SIZE,
                                                        "device": None, "channels": 1, "dtype": "float32"}
    assert stream.calls == ["start", "write", "write", "stop", "close"]  # stop() = play what is queued
    assert stream.written[0].shape == (FRAME_SIZE, 1) and stream.written[0].dtype == np.float32
    assert stream.written[0].min() == -1.0 and stream.written[0].max() == 1.0  # clipped
    assert sink.underflows == 1 and sink.seconds_written == pytest.approx(2 * FRAME_SIZE / SAMPLE_RATE)


def test_speaker_aborts_on_error_and_accepts_tensors():
    torch = pytest.importorskip("torch")
    with pytest.raises(KeyboardInterrupt):
        with live.SpeakerSink(stream_factory=FakeStream) as sink:
            sink.write(torch.full((1, FRAME_SIZE), 0.25))
            raise KeyboardInterrupt
    stream = FakeStream.instances[0]
    assert stream.calls == ["start", "write", "abort", "close"]
    np.testing.assert_array_equal(stream.written[0], np.full((FRAME_SIZE, 1), 0.25, np.float32))
    with pytest.raises(RuntimeError, match="with"):
        sink.write(np.zeros(4))


def test_list_devices_with_injected_module():
    fake_sd = SimpleNamespace(
        query_devices=lambda: [
            {"name": "mic", "max_input_channels": 2, "max_output_channels": 0, "default_samplerate": 48000.0},
            {"name": "speakers", "max_input_channels": 0, "max_output_channels": 2, "default_samplerate": 44100},
        ],
        default=SimpleNamespace(device=[0, 1]),
    )
    devices = live.list_devices(fake_sd)
    assert [(d.index, d.name, d.is_default_input, d.is_default_output) for d in devices] == [
        (0, "mic", True, False), (1, "speakers", False, True)]
    assert devices[0].default_samplerate == 48000.0 and devices[1].max_output_channels == 2


def _import_raising(monkeypatch, error: type[BaseException]):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sounddevice":
            raise error("simulated")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_missing_sounddevice_or_portaudio(monkeypatch):
    _import_raising(monkeypatch, ImportError)
    with pytest.raises(DeviceError, match="pip install sounddevice"):
        live.import_sounddevice()
    assert not live.is_available()
    _import_raising(monkeypatch, OSError)
    with pytest.raises(DeviceError, match="apt-get install libportaudio2"):
        live.import_sounddevice()
    with pytest.raises(DeviceError, match="libportaudio2"):
        with live.MicSource():  # the default factory needs sounddevice
            pass
    with pytest.raises(DeviceError, match="libportaudio2"):
        live.list_devices()


def test_parse_device_index_or_name():
    assert [live.parse_device(v) for v in (None, "", " 3 ", "12", "USB Audio", "hw:1,0")] == [
        None, None, 3, 12, "USB Audio", "hw:1,0"]


def _fake_sounddevice(fail: Exception | None = None):
    seen = []

    def check(**kwargs):
        seen.append(kwargs)
        if fail is not None:
            raise fail

    fake = SimpleNamespace(
        check_input_settings=lambda **kw: check(kind="input", **kw),
        check_output_settings=lambda **kw: check(kind="output", **kw),
        query_devices=lambda: [
            {"name": "mic", "max_input_channels": 2, "max_output_channels": 0, "default_samplerate": 48000.0},
            {"name": "speakers", "max_input_channels": 0, "max_output_channels": 2, "default_samplerate": 44100},
            {"name": "duplex", "max_input_channels": 1, "max_output_channels": 1, "default_samplerate": 24000},
        ],
        default=SimpleNamespace(device=[0, 1]),
    )
    return fake, seen


def test_check_device_asks_portaudio_for_24k_mono_float32():
    fake, seen = _fake_sounddevice()
    live.check_device(3, "input", fake)
    live.check_device(None, "output", fake)
    assert seen == [
        {"kind": "input", "device": 3, "channels": 1, "dtype": "float32", "samplerate": SAMPLE_RATE},
        {"kind": "output", "device": None, "channels": 1, "dtype": "float32", "samplerate": SAMPLE_RATE}]
    fake, _ = _fake_sounddevice(ValueError("No input device matching 'nope'"))
    with pytest.raises(DeviceError, match="cannot use the microphone 'nope': No input device matching 'nope'"):
        live.check_device("nope", "input", fake)
    fake, _ = _fake_sounddevice(RuntimeError("Error querying device -1"))
    with pytest.raises(DeviceError, match=r"audio output \(is there a default audio device\?\): Error querying"):
        live.check_device(None, "output", fake)


def test_device_lines_per_direction():
    fake, _ = _fake_sounddevice()
    assert live.device_lines("input", fake) == ["0: mic (2 input channels, 48000 Hz) [default input]",
                                                "2: duplex (1 input channels, 24000 Hz)"]
    assert live.device_lines("output", fake) == ["1: speakers (2 output channels, 44100 Hz) [default output]",
                                                 "2: duplex (1 output channels, 24000 Hz)"]
    empty = SimpleNamespace(query_devices=lambda: [], default=SimpleNamespace(device=[-1, -1]))
    with pytest.raises(DeviceError, match="no audio input device"):
        live.device_lines("input", empty)


class BufferedStream(FakeStream):
    """A stream that reports its buffer (write_available when empty) and latency, like a PortAudio one."""

    write_available = 5760
    latency = 0.16


def test_speaker_pushes_the_buffered_audio_out_before_stop():
    """PortAudio's ALSA back end drops what is buffered on stop(): silence of a buffer + latency + a block first."""
    with live.SpeakerSink(stream_factory=BufferedStream) as sink:
        sink.write(np.ones(FRAME_SIZE, np.float32))
    stream = FakeStream.instances[0]
    assert stream.calls == ["start", "write", "write", "stop", "close"]
    silence = stream.written[1]
    assert silence.shape == (5760 + round(0.16 * SAMPLE_RATE) + FRAME_SIZE, 1) and not silence.any()
    assert sink.samples_written == FRAME_SIZE  # the padding is not counted as played speech
    with pytest.raises(KeyboardInterrupt):
        with live.SpeakerSink(stream_factory=BufferedStream) as sink:
            sink.write(np.ones(FRAME_SIZE, np.float32))
            raise KeyboardInterrupt
    assert FakeStream.instances[1].calls == ["start", "write", "abort", "close"]  # Ctrl-C: no padding, no wait
    with live.SpeakerSink(stream_factory=BufferedStream):
        pass
    assert FakeStream.instances[2].calls == ["start", "stop", "close"]  # nothing played: nothing to push out


def test_mic_records_nothing_after_stop():
    """Ctrl-C (stop) ends the recording at once; what was queued before is still yielded (a slow consumer's
    backlog used to keep the recording going for as long as it lasted)."""
    with live.MicSource(stream_factory=FakeStream) as mic:
        callback = FakeStream.instances[0].kwargs["callback"]
        callback(np.full((FRAME_SIZE, 1), 1.0, np.float32), FRAME_SIZE, None, None)
        mic.stop()
        callback(np.full((FRAME_SIZE, 1), 2.0, np.float32), FRAME_SIZE, None, None)  # PortAudio still running
        assert [float(chunk[0]) for chunk in mic] == [1.0]


def test_alsa_messages_stay_off_the_terminal(capfd):
    """alsa-lib writes to fd 2 itself (device probes, "underrun occurred" for each late --play block)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("asound")
    if name is None:
        pytest.skip("alsa-lib is not installed")
    alsa = ctypes.CDLL(name)

    def open_unknown_pcm() -> str:
        pcm = ctypes.c_void_p()
        capfd.readouterr()
        assert alsa.snd_pcm_open(ctypes.byref(pcm), b"dsm_no_such_pcm", 0, 0) < 0
        return capfd.readouterr().err

    if live._alsa_handler is None:  # the default handler prints
        assert "dsm_no_such_pcm" in open_unknown_pcm()
    assert live.quiet_alsa() and live.quiet_alsa()
    assert open_unknown_pcm() == ""
