"""`--play` and `--mic` end to end through PortAudio and a real sound server (no fake stream).

The module starts a private PulseAudio (``pulseaudio``, ``pulseaudio-utils`` and ``libasound2-plugins`` from
Debian; ``tools/setup.sh --test`` installs them) with a 24 kHz mono s16 ``module-null-sink`` as the default sink
and its monitor as the default source; ``dsm`` reaches it through PortAudio's ALSA ``default`` device (the
PulseAudio ALSA plugin), clients through ``PULSE_SERVER``. The server is killed at the end. The tests skip, with
the reason, only where the server cannot start (not installed, or it fails to come up). Every wait is bounded.

Samples are compared exactly (16-bit; no tolerance: float32 goes through the plugin unconverted, measured
0 LSB of difference), after removing runs of >= 2 ms of digital silence from both sides. That removes the
silence around the sound, the silence PulseAudio plays into a stream that runs dry (an underrun on a busy
machine delays the rest, it loses nothing), and the start of a new stream that the monitor drops up to its own
latency (``paplay`` shows the same; at most 0.1 s is allowed for it, and only at the start).

* ``dsm speak --play``: the sink's monitor, recorded with ``parec``, holds the samples ``dsm speak -o`` writes
  for the same text and seed, to the last one (PortAudio cut the last ~0.2 s before the sink pushed it out).
* ``dsm transcribe --mic``: a WAV of real speech played into the sink with ``paplay`` is heard as the same words
  as ``dsm transcribe`` of the same file. Rule for the alignment: the tiny models have random weights, so their
  words change with any shift of the 80 ms frame grid; the file is therefore transcribed with the lead-in and
  tail the microphone heard. ``--save-audio`` gives what the mic heard: it must be the file's samples (rule
  above); that file, i.e. the same samples at the same offset, must then give exactly the mic's words and
  times (greedy decoding, same samples: no near-ties to resolve).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import SINGLE_THREAD_ENV, run_dsm, subprocess_env

RATE = 24000
SINK = "dsmtest"
SERVER_START_TIMEOUT = 20.0
CONNECT_TIMEOUT = 120.0  # a dsm child: torch import + model load on a busy machine
RUN_TIMEOUT = 300.0
MIN_SILENCE = RATE // 500  # 2 ms: shorter runs of zeros are part of the sound
MAX_START_LOSS = RATE // 10  # samples the monitor may drop at the start of a stream
TEXT = "Hello there, this is a test of the sound card."
LEAD_IN_SECONDS, TAIL_SECONDS, SPEECH_SECONDS = 0.5, 0.3, 4.0
SERVER_SCRIPT = """\
load-module module-native-protocol-unix auth-anonymous=1 socket={socket}
load-module module-null-sink sink_name={sink} rate={rate} channels=1 format=s16le
set-default-sink {sink}
set-default-source {sink}.monitor
"""


def _pactl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pactl", *args], env=env, capture_output=True, text=True, timeout=10, check=False)


@pytest.fixture(scope="module")
def sound_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    """The environment of a client of the private PulseAudio (the test env plus PULSE_SERVER)."""
    missing = [tool for tool in ("pulseaudio", "pactl", "parec", "paplay") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"no sound server: {', '.join(missing)} not installed (tools/setup.sh --test installs "
                    f"pulseaudio, pulseaudio-utils, libasound2-plugins)")
    folder = tmp_path_factory.mktemp("pulse")
    socket = folder / "native"
    (folder / "server.pa").write_text(SERVER_SCRIPT.format(socket=socket, sink=SINK, rate=RATE))
    server_env = dict(os.environ, HOME=str(folder), XDG_RUNTIME_DIR=str(folder), XDG_CONFIG_HOME=str(folder))
    log = open(folder / "server.log", "wb")
    server = subprocess.Popen(
        ["pulseaudio", "-n", "-F", str(folder / "server.pa"), "--daemonize=no", "--system=false",
         "--use-pid-file=no", "--disallow-exit", "--exit-idle-time=300", "--log-target=stderr"],
        stdout=log, stderr=subprocess.STDOUT, env=server_env, start_new_session=True)
    env = subprocess_env({"PULSE_SERVER": f"unix:{socket}", **SINGLE_THREAD_ENV})
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while _pactl(env, "info").returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"the sound server did not start: {(folder / 'server.log').read_text()[-500:]}")
            time.sleep(0.1)
        yield env
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _source_outputs(env: dict[str, str]) -> int:
    return len(_pactl(env, "list", "short", "source-outputs").stdout.splitlines())


def _wait_for_recorder(env: dict[str, str], proc: subprocess.Popen, count: int) -> None:
    """Until ``count`` recording streams are connected to the server (``proc`` must stay alive meanwhile)."""
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while _source_outputs(env) < count:
        assert proc.poll() is None, f"the recorder ended early ({proc.returncode})"
        assert time.monotonic() < deadline, "the recorder did not connect to the sound server"
        time.sleep(0.05)


@contextmanager
def _recording_monitor(env: dict[str, str], path: Path) -> Iterator[None]:
    """``parec`` of the sink's monitor (s16 mono 24 kHz, 5 ms latency) into ``path`` while the block runs."""
    with open(path, "wb") as out:
        parec = subprocess.Popen(
            ["parec", "--raw", "--format=s16le", f"--rate={RATE}", "--channels=1", "--latency-msec=5",
             f"--device={SINK}.monitor"], stdout=out, env=env)
        try:
            _wait_for_recorder(env, parec, 1)
            yield
            time.sleep(0.3)  # the monitor is a little behind the sink
        finally:
            parec.send_signal(signal.SIGINT)
            try:
                parec.wait(timeout=10)
            except subprocess.TimeoutExpired:
                parec.kill()
                parec.wait()


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]


def _pcm16(path: Path) -> np.ndarray:
    samples, rate = soundfile.read(path, dtype="int16")
    assert rate == RATE and samples.ndim == 1
    return samples


def _without_silences(samples: np.ndarray) -> np.ndarray:
    """``samples`` without its runs of at least MIN_SILENCE zeros."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], (samples == 0).astype(np.int8), [0]])))
    keep = np.ones(len(samples), dtype=bool)
    for start, end in zip(edges[::2], edges[1::2]):
        if end - start >= MIN_SILENCE:
            keep[start:end] = False
    return samples[keep]


def test_list_devices_shows_the_server(sound_env):
    """PortAudio's ALSA devices that reach the server: ``pulse`` and ``default`` (the default, both ways)."""
    for command, kind in (("transcribe", "input"), ("speak", "output")):
        listed = run_dsm(command, "--list-devices", env=sound_env, timeout=RUN_TIMEOUT)
        _ok(listed)
        names = {line.split(" (")[0].split(": ", 1)[1]: line for line in listed.stdout.decode().splitlines()}
        assert {"pulse", "default"} <= set(names), names
        assert names["default"].endswith(f"[default {kind}]"), names


def test_speak_play_arrives_at_the_sink(sound_env, tiny_tts, tiny_voices, tmp_path):
    """Played on the device picked by name (``--output-device pulse``); the mic test below uses the default."""
    args = ["speak", "--text", TEXT, "--model", tiny_tts, "--voice-repo", tiny_voices, "--voice", "voices/alice.wav",
            "--seed", "7"]
    _ok(run_dsm(*args, "-o", tmp_path / "speech.wav", env=sound_env, timeout=RUN_TIMEOUT))
    with _recording_monitor(sound_env, tmp_path / "monitor.raw"):
        played = run_dsm(*args, "--play", "--output-device", "pulse", env=sound_env, timeout=RUN_TIMEOUT)
    _ok(played)
    assert b"ALSA lib" not in played.stderr  # alsa-lib printed an "underrun occurred" line per late block
    reference = _without_silences(_pcm16(tmp_path / "speech.wav"))
    recorded = _without_silences(np.fromfile(tmp_path / "monitor.raw", dtype="<i2"))
    assert len(reference) >= RATE and np.sqrt(np.mean(reference.astype(np.float64) ** 2)) > 300  # real audio
    missing_start = len(reference) - len(recorded)
    assert 0 <= missing_start <= MAX_START_LOSS, f"{len(recorded)} samples arrived of {len(reference)}"
    np.testing.assert_array_equal(recorded, reference[missing_start:])  # every sample, to the last one


def _jsonl_words(text: str) -> list[tuple]:
    events = [json.loads(line) for line in text.splitlines()]
    return [(e["type"], e.get("text"), e.get("start_time"), e.get("stop_time")) for e in events
            if e["type"] in ("Word", "EndWord")]


def test_transcribe_mic_hears_what_is_played(sound_env, tiny_stt, bria_24k, tmp_path):
    speech = np.clip(np.rint(bria_24k(SPEECH_SECONDS) * 32768), -32768, 32767).astype(np.int16)
    clip = np.concatenate([np.zeros(round(LEAD_IN_SECONDS * RATE), np.int16), speech,
                           np.zeros(round(TAIL_SECONDS * RATE), np.int16)])
    soundfile.write(tmp_path / "clip.wav", clip, RATE, subtype="PCM_16")
    mic = subprocess.Popen(
        [sys.executable, "-m", "dsmcli", "transcribe", "--mic", "-m", tiny_stt, "-f", "jsonl",
         "-o", tmp_path / "mic.jsonl", "--save-audio", tmp_path / "heard.wav"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=sound_env)
    try:
        _wait_for_recorder(sound_env, mic, 1)
        played = subprocess.run(["paplay", tmp_path / "clip.wav"], env=sound_env, timeout=60, capture_output=True)
        assert played.returncode == 0, played.stderr
        time.sleep(0.3)
        mic.send_signal(signal.SIGINT)
        _, err = mic.communicate(timeout=RUN_TIMEOUT)
    finally:
        mic.kill()
        mic.wait()
    assert mic.returncode == 130 and err.decode().count("\n") == 1, err.decode()

    heard = _pcm16(tmp_path / "heard.wav")
    np.testing.assert_array_equal(_without_silences(heard), _without_silences(clip))  # all of the speech, exact
    from_file = run_dsm("transcribe", tmp_path / "heard.wav", "-m", tiny_stt, "-f", "jsonl", env=sound_env,
                        timeout=RUN_TIMEOUT)
    _ok(from_file)
    mic_words = _jsonl_words((tmp_path / "mic.jsonl").read_text())
    assert mic_words == _jsonl_words(from_file.stdout.decode()) and len(mic_words) >= 10
