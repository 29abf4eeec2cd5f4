"""Microphone source and speaker sink (``sounddevice`` / PortAudio, an optional extra imported lazily).

Both take a ``stream_factory`` so tests (and other back ends) can replace the PortAudio stream: it is called as
``stream_factory(samplerate=…, blocksize=…, device=…, channels=1, dtype="float32"[, callback=…])`` and must
return an object with ``start()``, ``stop()``, ``abort()``, ``close()`` and, for the sink, ``write(array)``,
like ``sounddevice.InputStream`` / ``OutputStream``.

    with MicSource() as mic:                 # float32 mono chunks of FRAME_SIZE samples at SAMPLE_RATE
        for chunk in mic: ...                # Ctrl-C ends the loop; mic.interrupted tells the caller
    with SpeakerSink() as out:
        out.write(chunk)                     # blocks while the device buffer is full (real-time pacing)
                                             # leaving the block plays what is queued (drain)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from dsmcli.constants import FRAME_SIZE, SAMPLE_RATE
from dsmcli.errors import DeviceError

PORTAUDIO_HINT = "PortAudio is not installed: apt-get install libportaudio2"
SOUNDDEVICE_HINT = "sounddevice is not installed: pip install sounddevice"
MONO = 1
SAMPLE_DTYPE = "float32"
POLL_SECONDS = 0.1  # how often a waiting MicSource iterator checks for stop()

StreamFactory = Callable[..., Any]
Device = int | str | None


_alsa_handler: Any = None  # the installed no-op alsa-lib error handler (kept alive here)
_ALSA_HANDLER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                      ctypes.c_char_p)


def quiet_alsa() -> bool:
    """Keep alsa-lib's messages off the terminal: it prints device probes (``ALSA lib pcm_dsnoop.c: unable to
    open slave``, when PortAudio starts) and xruns (``underrun occurred``, for each late block of ``--play``)
    straight to file descriptor 2. PortAudio reports xruns as stream status, which the sink and source count.
    True when alsa-lib is loaded and quiet (idempotent)."""
    global _alsa_handler
    if _alsa_handler is not None:
        return True
    name = ctypes.util.find_library("asound") if sys.platform.startswith("linux") else None
    if name is None:
        return False
    try:
        alsa = ctypes.CDLL(name)  # the process's one copy: PortAudio's ALSA back end uses the same handler
    except OSError:
        return False
    handler = _ALSA_HANDLER_TYPE(lambda *message: None)
    alsa.snd_lib_error_set_handler(handler)
    _alsa_handler = handler
    return True


def import_sounddevice() -> ModuleType:
    """The ``sounddevice`` module, or DeviceError naming the missing piece."""
    quiet_alsa()  # before PortAudio's start-up probes the ALSA devices
    try:
        import sounddevice
    except ImportError:
        raise DeviceError(SOUNDDEVICE_HINT) from None
    except OSError:  # sounddevice imports but cannot load the PortAudio shared library
        raise DeviceError(PORTAUDIO_HINT) from None
    return sounddevice


def is_available() -> bool:
    """True when sounddevice and PortAudio can be loaded (says nothing about devices being present)."""
    try:
        import_sounddevice()
    except DeviceError:
        return False
    return True


@dataclass(frozen=True)
class AudioDevice:
    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float
    is_default_input: bool = False
    is_default_output: bool = False


def list_devices(sounddevice: ModuleType | None = None) -> list[AudioDevice]:
    """The audio devices PortAudio sees (``sounddevice`` may be injected for tests)."""
    sd = sounddevice if sounddevice is not None else import_sounddevice()
    default_in, default_out = _default_devices(sd)
    return [
        AudioDevice(index=index, name=str(info["name"]),
                    max_input_channels=int(info["max_input_channels"]),
                    max_output_channels=int(info["max_output_channels"]),
                    default_samplerate=float(info["default_samplerate"]),
                    is_default_input=index == default_in, is_default_output=index == default_out)
        for index, info in enumerate(sd.query_devices())
    ]


def parse_device(text: str | None) -> Device:
    """A ``--input-device`` / ``--output-device`` value as sounddevice takes it: an index, or (part of) a name."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    return int(text) if text.isdigit() else text


def _where(device: Device, what: str) -> str:
    return f"the {what}" + (" (is there a default audio device?)" if device is None else f" {device!r}")


def check_device(device: Device, kind: str, sounddevice: ModuleType | None = None) -> None:
    """Fail early (before any model loads) unless PortAudio loads and ``device`` (None: the default) takes
    mono float32 at SAMPLE_RATE. ``kind`` is "input" (microphone) or "output" (speakers)."""
    sd = sounddevice if sounddevice is not None else import_sounddevice()
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    what = "microphone" if kind == "input" else "audio output"
    try:
        check(device=device, channels=MONO, dtype=SAMPLE_DTYPE, samplerate=SAMPLE_RATE)
    except Exception as exc:  # PortAudioError / ValueError ("No input device matching ...")
        raise DeviceError(f"cannot use {_where(device, what)}: {exc}") from None


def device_lines(kind: str, sounddevice: ModuleType | None = None) -> list[str]:
    """``--list-devices``: one line per device with ``kind`` ("input"/"output") channels, the default marked."""
    lines = []
    for found in list_devices(sounddevice):
        channels = found.max_input_channels if kind == "input" else found.max_output_channels
        if channels <= 0:
            continue
        default = found.is_default_input if kind == "input" else found.is_default_output
        lines.append(f"{found.index}: {found.name} ({channels} {kind} channels, {found.default_samplerate:g} Hz)"
                     + (f" [default {kind}]" if default else ""))
    if not lines:
        raise DeviceError(f"PortAudio sees no audio {kind} device")
    return lines


def _default_devices(sd: ModuleType) -> tuple[int, int]:
    default = getattr(sd.default, "device", (-1, -1))
    try:
        return int(default[0]), int(default[1])
    except (TypeError, ValueError, IndexError):
        return -1, -1


def _open(factory: StreamFactory | None, kind: str, what: str, **kwargs: Any) -> Any:
    """Create and start a stream, turning PortAudio failures (bad device, bad rate) into DeviceError."""
    if factory is None:
        factory = getattr(import_sounddevice(), kind)
    where = _where(kwargs.get("device"), what)
    try:
        stream = factory(channels=MONO, dtype=SAMPLE_DTYPE, **kwargs)
    except Exception as exc:  # PortAudioError / ValueError from the device layer: one line for the user
        raise DeviceError(f"cannot open {where}: {exc}") from None
    try:
        stream.start()
    except Exception as exc:
        stream.close()
        raise DeviceError(f"cannot start {where}: {exc}") from None
    return stream


class MicSource:
    """Microphone chunks ``[block]`` float32 mono at ``rate``, as a context manager and iterator.

    PortAudio's callback thread queues copies of each block; iteration yields them in order until
    :meth:`stop` is called, the stream is closed, or Ctrl-C (then ``interrupted`` is True and the loop simply
    ends, so the caller can flush its outputs before exiting with code 130). ``overflows`` counts blocks PortAudio
    flagged (input dropped because we were too slow).
    """

    def __init__(self, device: Device = None, rate: int = SAMPLE_RATE, block: int = FRAME_SIZE,
                 stream_factory: StreamFactory | None = None) -> None:
        self.device = device
        self.rate = rate
        self.block = block
        self.interrupted = False
        self.overflows = 0
        self._factory = stream_factory
        self._queue: queue.Queue[np.ndarray] = queue.Queue()
        self._stopped = threading.Event()
        self._stream: Any = None

    def __enter__(self) -> MicSource:
        self._stopped.clear()
        self._stream = _open(self._factory, "InputStream", "microphone", samplerate=self.rate,
                             blocksize=self.block, device=self.device, callback=self._callback)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _callback(self, indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        """PortAudio thread: ``indata [frames, channels]`` is reused after return, so copy channel 0. After
        :meth:`stop` nothing more is queued: Ctrl-C ends the recording at once, even while a slow consumer is
        still working through a backlog (it kept recording as long as the backlog lasted)."""
        if self._stopped.is_set():
            return
        if status:
            self.overflows += 1
        self._queue.put(np.array(indata[:frames, 0], dtype=np.float32))

    def stop(self) -> None:
        """End the iteration (thread-safe); chunks already queued are still yielded first."""
        self._stopped.set()

    def close(self) -> None:
        self._stopped.set()
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.stop()
            stream.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._stream is None:
            raise RuntimeError("use MicSource inside a `with` block")
        try:
            while True:
                try:
                    yield self._queue.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    if self._stopped.is_set() or not getattr(self._stream, "active", True):
                        return  # stopped, closed, or PortAudio ended the stream (device gone)
        except KeyboardInterrupt:
            self.interrupted = True


class SpeakerSink:
    """Plays float32 mono chunks at ``rate``; ``write`` blocks to keep real time, leaving the block drains."""

    def __init__(self, device: Device = None, rate: int = SAMPLE_RATE, block: int = FRAME_SIZE,
                 stream_factory: StreamFactory | None = None) -> None:
        self.device = device
        self.rate = rate
        self.block = block
        self.underflows = 0
        self.samples_written = 0
        self._factory = stream_factory
        self._stream: Any = None
        self._capacity = 0

    def __enter__(self) -> SpeakerSink:
        self._stream = _open(self._factory, "OutputStream", "audio output", samplerate=self.rate,
                             blocksize=self.block, device=self.device)
        self._capacity = int(getattr(self._stream, "write_available", 0) or 0)  # empty buffer: all of it is free
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(drain=exc_type is None)

    def write(self, chunk: Any) -> None:
        """Queue ``chunk`` (``[n]`` samples in [-1, 1]; numpy or CPU tensor); blocks while the buffer is full."""
        if self._stream is None:
            raise RuntimeError("use SpeakerSink inside a `with` block")
        data = np.clip(np.asarray(chunk, dtype=np.float32).reshape(-1, MONO), -1.0, 1.0)
        if self._stream.write(data):
            self.underflows += 1
        self.samples_written += data.shape[0]

    @property
    def seconds_written(self) -> float:
        return self.samples_written / self.rate

    def close(self, drain: bool = True) -> None:
        """Stop the stream: ``drain`` plays what is queued first, otherwise it is dropped (Ctrl-C, errors)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            if drain:
                self._push_out(stream)
                stream.stop()
            else:
                stream.abort()
        finally:
            stream.close()

    def _push_out(self, stream: Any) -> None:
        """Write silence until the last samples have left the buffers. PortAudio's ALSA back end drops what is
        still buffered on stop() (through PulseAudio's ALSA plugin the last ~0.2 s of speech was cut): a buffer's
        worth, the device latency and one block of silence push every real sample out first."""
        latency = float(getattr(stream, "latency", 0.0) or 0.0)
        if not latency and not self._capacity:
            return  # a stream that reports no buffering (tests' fakes)
        samples = self._capacity + round(latency * self.rate) + self.block
        if self.samples_written:
            stream.write(np.zeros((samples, MONO), dtype=np.float32))
