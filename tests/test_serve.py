"""``dsm serve`` end to end: a real server process on 127.0.0.1 (tiny fixtures), real clients.

Our own MessagePack WebSocket client, written from the protocol (docs: PROTOCOLS.md §1-2), and the official
``openai`` package. STT results must equal ``dsm transcribe`` of the same samples, TTS audio ``dsm speak``
with the same voice and options within 1e-4. Every wait is bounded.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
import soundfile

msgpack = pytest.importorskip("msgpack")
openai = pytest.importorskip("openai")
ws_client = pytest.importorskip("websockets.sync.client")
ws_exceptions = pytest.importorskip("websockets.exceptions")

from conftest import SINGLE_THREAD_ENV, run_dsm, subprocess_env  # noqa: E402
from test_transcribe_cli import jsonl_words  # noqa: E402

KEY = "test-key"
TEXT = "Hello there, this is a small test of the speech server."
FRAME = 1920
START_SECONDS = 180.0
IO_SECONDS = 120.0
MAX_STREAMS = 8


# --------------------------------------------------------------------------------------------- the server
@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: list[str] = field(default_factory=list)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.http}/health", timeout=10) as response:
            return json.loads(response.read())

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(*args: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "dsmcli", "serve", "--port", str(port), "--threads", "1", *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=subprocess_env(SINGLE_THREAD_ENV))
    server = Server(process, port)
    threading.Thread(target=lambda: server.log.extend(process.stderr), daemon=True).start()
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            time.sleep(0.2)
            raise AssertionError(f"dsm serve exited with {process.returncode}: {''.join(server.log)[-2000:]}")
        try:
            server.health()
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    process.kill()
    raise AssertionError("dsm serve did not start in time")


@pytest.fixture(scope="module")
def server(tiny_stt, tiny_tts, tiny_voices) -> Iterator[Server]:
    server = start_server("--stt", tiny_stt, "--tts", tiny_tts, "--voice-repo", tiny_voices, "--api-key", KEY,
                          "--max-streams", str(MAX_STREAMS), "--temperature", "0", "--max-upload-mb", "1")
    yield server
    assert server.stop(signal.SIGINT) == 0, "".join(server.log)[-2000:]
    assert "dsm serve: stopped" in "".join(server.log)


# ---------------------------------------------------------------------------- our Kyutai-protocol client
def pack(message: dict) -> bytes:
    return msgpack.packb(message, use_single_float=True)


def connect(server: Server, path: str, headers: dict | None = None):
    headers = {"kyutai-api-key": KEY} if headers is None else headers
    return ws_client.connect(f"{server.ws}{path}", additional_headers=headers, open_timeout=30,
                             close_timeout=10, max_size=None)


def receive_all(ws, until=None) -> list[dict]:
    """Messages until the server closes (or ``until(message)``), each within the I/O bound."""
    messages = []
    while True:
        try:
            data = ws.recv(timeout=IO_SECONDS)
        except ws_exceptions.ConnectionClosed:
            return messages
        messages.append(msgpack.unpackb(data, raw=False))
        if until is not None and until(messages[-1]):
            return messages


def stream_audio(server: Server, audio: np.ndarray, delay: float = 0.0) -> list[dict]:
    """Send ``audio`` in 80 ms messages, then ``Eos``; all the server sends back."""
    time.sleep(delay)
    with connect(server, "/api/asr-streaming") as ws:
        for start in range(0, len(audio), FRAME):
            ws.send(pack({"type": "Audio", "pcm": audio[start:start + FRAME].tolist()}))
        ws.send(pack({"type": "Eos"}))
        return receive_all(ws)


def words_of(messages: list[dict]) -> list[tuple[str, float, float]]:
    """(text, start, stop) pairs from Word / EndWord messages, at the millisecond ``dsm transcribe`` jsonl keeps."""
    starts = [(m["text"], m["start_time"]) for m in messages if m["type"] == "Word"]
    stops = [m["stop_time"] for m in messages if m["type"] == "EndWord"]
    assert len(starts) == len(stops)
    return [(text, round(start, 3), round(stop, 3)) for (text, start), stop in zip(starts, stops)]


@pytest.fixture(scope="module")
def clips(bria_24k, loona_24k) -> list[np.ndarray]:
    return [bria_24k(3.0, 0.4 * i) if i % 2 == 0 else loona_24k(3.0, 0.4 * i) for i in range(MAX_STREAMS)]


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory, clips) -> str:
    path = tmp_path_factory.mktemp("serve") / "clip.wav"
    soundfile.write(path, clips[0], 24000, subtype="FLOAT")
    return str(path)


@pytest.fixture(scope="module")
def transcribed(tiny_stt, clip_file) -> list[tuple[str, float, float]]:
    """``dsm transcribe -f jsonl`` of the first clip."""
    proc = run_dsm("transcribe", clip_file, "--model", tiny_stt, "-f", "jsonl", env=SINGLE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    words = jsonl_words(proc.stdout.decode())
    assert len(words) >= 5
    return words


@pytest.fixture(scope="module")
def alone(tiny_stt, clips) -> list[list[tuple[str, float, float]]]:
    """What the ``dsm transcribe`` code (``Transcriber``, batch 1) gives for each clip alone."""
    from dsmcli.stt import SttModel
    from test_transcribe_cli import transcribe_array

    model = SttModel.load(tiny_stt)
    return [[(w.text.strip(), round(w.start, 3), round(w.end, 3)) for w in transcribe_array(model, clip)]
            for clip in clips]


# --------------------------------------------------------------------------------------------- STT tests
def test_kyutai_stt_stream_equals_dsm_transcribe(server, clips, transcribed):
    messages = stream_audio(server, clips[0])
    assert messages[0] == {"type": "Ready"}
    assert words_of(messages) == transcribed
    steps = [m for m in messages if m["type"] == "Step"]  # the tiny model has VAD heads
    assert steps and all(len(m["prs"]) >= 3 and all(0 <= p <= 1 for p in m["prs"]) for m in steps)
    assert [m["step_idx"] for m in steps] == list(range(len(steps)))


def test_marker_is_echoed_after_the_audio_before_it(server, clips, transcribed):
    with connect(server, "/api/asr-streaming") as ws:
        ws.send(pack({"type": "Audio", "pcm": clips[0].tolist()}))
        ws.send(pack({"type": "Marker", "id": 7}))
        for _ in range(40):  # keep sending silence, as Kyutai's file client does, until the echo
            ws.send(pack({"type": "Audio", "pcm": [0.0] * FRAME}))
        messages = receive_all(ws, until=lambda m: m["type"] == "Marker")
    assert messages[-1] == {"type": "Marker", "id": 7}
    # the words made final by then (a word is final at the next word boundary), as `dsm transcribe` has them
    words = words_of(messages)
    assert len(words) >= 5 and words == transcribed[: len(words)]


def test_eight_streams_started_at_different_moments_each_equal_alone(server, clips, alone):
    with ThreadPoolExecutor(MAX_STREAMS) as pool:
        results = list(pool.map(lambda i: stream_audio(server, clips[i], delay=0.15 * i), range(MAX_STREAMS)))
    for messages, expected in zip(results, alone):
        assert words_of(messages) == expected


def test_a_full_server_refuses_and_a_vanished_client_frees_its_slot(server, clips, alone):
    with ExitStack() as stack:
        sockets = [stack.enter_context(connect(server, "/api/asr-streaming")) for _ in range(MAX_STREAMS)]
        for ws in sockets:
            ws.send(pack({"type": "Audio", "pcm": clips[1][:FRAME * 4].tolist()}))
            assert msgpack.unpackb(ws.recv(timeout=IO_SECONDS))["type"] == "Ready"
        with connect(server, "/api/asr-streaming") as extra:
            refused = receive_all(extra)
        assert refused == [{"type": "Error", "message": "no free channels"}]
        client = openai.OpenAI(base_url=f"{server.http}/v1", api_key=KEY, max_retries=0, timeout=IO_SECONDS)
        with pytest.raises(openai.InternalServerError) as full:
            client.audio.transcriptions.create(model="dsm", file=("a.wav", soundfile_bytes(clips[1])))
        assert full.value.status_code == 503 and full.value.response.headers["retry-after"]
        sockets.pop().close()  # mid-stream
        deadline = time.monotonic() + 30
        while server.health()["stt"]["busy"] >= MAX_STREAMS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert words_of(stream_audio(server, clips[2])) == alone[2]


def test_wrong_or_missing_key_is_refused(server):
    for headers in ({}, {"kyutai-api-key": "wrong"}):
        with pytest.raises(ws_exceptions.InvalidStatus) as refused:
            connect(server, "/api/asr-streaming", headers=headers)
        assert refused.value.response.status_code == 401
    with connect(server, "/api/asr-streaming?auth_id=" + KEY, headers={}) as ws:  # the query form
        assert msgpack.unpackb(ws.recv(timeout=IO_SECONDS))["type"] == "Ready"
    client = openai.OpenAI(base_url=f"{server.http}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


@pytest.mark.parametrize("data", [b"\xc1", pack({"type": "Audio", "pcm": "x"}), pack({"type": "Nope"}),
                                  pack([1, 2]), pack({"type": "Audio", "pcm": [float("nan")]})])
def test_a_malformed_message_gets_an_error_and_the_server_keeps_serving(server, clips, alone, data):
    with connect(server, "/api/asr-streaming") as ws:
        ws.send(data)
        messages = receive_all(ws)
    assert messages[0] == {"type": "Ready"} and messages[-1]["type"] == "Error"
    assert "Traceback" not in messages[-1]["message"]
    assert words_of(stream_audio(server, clips[3])) == alone[3]


# --------------------------------------------------------------------------------------------- TTS tests
@pytest.fixture(scope="module")
def spoken(tmp_path_factory, tiny_tts, tiny_voices) -> np.ndarray:
    """``dsm speak`` of TEXT, greedy, voice alice (float32 samples of its 16-bit WAV)."""
    out = tmp_path_factory.mktemp("speak") / "speech.wav"
    proc = run_dsm("speak", "--text", TEXT, "--model", tiny_tts, "--voice-repo", tiny_voices, "--voice",
                   "voices/alice.wav", "--temperature", "0", "-o", out, env=SINGLE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    samples, rate = soundfile.read(out, dtype="float32")
    assert rate == 24000 and len(samples) > 0
    return samples


def test_kyutai_tts_stream_equals_dsm_speak(server, spoken):
    with connect(server, "/api/tts_streaming?voice=voices/alice.wav&format=PcmMessagePack") as ws:
        for word in TEXT.split():
            ws.send(pack({"type": "Text", "text": word}))
        ws.send(pack({"type": "Eos"}))
        messages = receive_all(ws)
    assert messages[0] == {"type": "Ready"}
    pcm = np.concatenate([np.asarray(m["pcm"], dtype=np.float32) for m in messages if m["type"] == "Audio"])
    assert pcm.shape == spoken.shape and np.abs(pcm - spoken).max() <= 1e-4
    texts = [m for m in messages if m["type"] == "Text"]
    assert [m["text"] for m in texts] == TEXT.split()
    assert all(m["start_s"] <= m["stop_s"] for m in texts)


def test_tts_unknown_voice_or_path_is_an_error(server):
    for voice in ("voices/nobody.wav", "../voices/alice.wav", "/etc/passwd"):
        with connect(server, f"/api/tts_streaming?voice={voice}&format=PcmMessagePack") as ws:
            messages = receive_all(ws)
        assert messages[-1]["type"] == "Error" and "voice" in messages[-1]["message"]


# ------------------------------------------------------------------------------------------ OpenAI client
@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.http}/v1", api_key=KEY, max_retries=0, timeout=IO_SECONDS)


def test_openai_transcription_gives_dsm_transcribe_words(client, clip_file, transcribed, tiny_stt):
    with open(clip_file, "rb") as audio:
        result = client.audio.transcriptions.create(model="dsm", file=audio, response_format="verbose_json",
                                                    timestamp_granularities=["word"])
    assert [(w.word, round(w.start, 3), round(w.end, 3)) for w in result.words] == transcribed
    assert result.duration == pytest.approx(3.0)
    srt = run_dsm("transcribe", clip_file, "--model", tiny_stt, "-f", "srt", env=SINGLE_THREAD_ENV)
    with open(clip_file, "rb") as audio:
        assert client.audio.transcriptions.create(model="dsm", file=audio, response_format="srt") == \
            srt.stdout.decode()
    with open(clip_file, "rb") as audio:
        text = client.audio.transcriptions.create(model="dsm", file=audio).text
    assert text.replace(" ", "") == "".join(w for w, _, _ in transcribed).replace(" ", "")


def test_openai_streamed_transcription(client, clip_file, transcribed):
    with open(clip_file, "rb") as audio:
        events = list(client.audio.transcriptions.create(model="dsm", file=audio, stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) == len(transcribed) and events[-1].type == "transcript.text.done"
    assert events[-1].text == "".join(deltas)


def test_openai_speech_equals_dsm_speak(client, spoken):
    response = client.audio.speech.create(model="dsm", voice="voices/alice.wav", input=TEXT, response_format="wav")
    samples, rate = soundfile.read(__import__("io").BytesIO(response.content), dtype="float32")
    assert rate == 24000 and samples.shape == spoken.shape and np.abs(samples - spoken).max() <= 1e-4
    pcm = client.audio.speech.create(model="dsm", voice="voices/alice.wav", input=TEXT, response_format="pcm")
    raw = np.frombuffer(pcm.content, "<i2").astype(np.float32) / 32768  # headerless 16-bit PCM
    assert raw.shape == spoken.shape and np.abs(raw - spoken).max() <= 1e-4


def soundfile_bytes(samples: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    soundfile.write(out, samples, 24000, format="WAV")
    return out.getvalue()


def test_openai_errors(client, server, tmp_path):
    with pytest.raises(openai.APIStatusError) as too_big:  # --max-upload-mb 1
        client.audio.transcriptions.create(model="dsm", file=("big.wav", b"\0" * (2 << 20)))
    assert too_big.value.status_code == 413
    bad = tmp_path / "not-audio.wav"
    bad.write_bytes(b"this is not audio at all")
    with pytest.raises(openai.BadRequestError):
        with open(bad, "rb") as audio:
            client.audio.transcriptions.create(model="dsm", file=audio)
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="dsm", voice="../../etc/passwd", input=TEXT, response_format="wav")
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="dsm", voice="voices/alice.wav", input="x" * 5000, response_format="wav")
    assert sorted(m.id for m in client.models.list().data) == sorted([server.health()["stt"]["model"],
                                                                       server.health()["tts"]["model"]])
    with pytest.raises(openai.NotFoundError):
        client.get("/nowhere", cast_to=object)


def test_one_log_line_per_request(server):
    text = "".join(server.log)
    assert "POST /v1/audio/transcriptions 200" in text and "/api/asr-streaming 101" in text
    assert "Traceback" not in text, text[text.find("Traceback") - 500:][:3000]


def test_sigterm_closes_open_streams_and_exits_0_in_bounded_time(tiny_stt, clips):
    server = start_server("--stt", tiny_stt, "--shutdown-timeout", "2", "--idle-timeout", "1")
    with connect(server, "/api/asr-streaming", headers={}) as silent:  # no --api-key: no key needed
        started = time.monotonic()
        assert receive_all(silent) == [{"type": "Ready"}]  # then dropped: silent past --idle-timeout
        assert time.monotonic() - started < 10
    deadline = time.monotonic() + 10
    while server.health()["stt"]["busy"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.health()["stt"]["busy"] == 0
    with connect(server, "/api/asr-streaming", headers={}) as ws:
        ws.send(pack({"type": "Audio", "pcm": clips[0][: FRAME * 10].tolist()}))
        assert msgpack.unpackb(ws.recv(timeout=IO_SECONDS))["type"] == "Ready"
        started = time.monotonic()
        assert server.stop(signal.SIGTERM, timeout=30) == 0, "".join(server.log)[-2000:]
        assert time.monotonic() - started < 15
        receive_all(ws)  # the server closed the socket: this returns


def test_cli_errors_are_one_line_with_their_exit_code(tiny_stt):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        cases = [(("serve", "--port", port), 2, "--stt"),
                 (("serve", "--stt", tiny_stt, "--port", port), 1, "cannot listen"),
                 (("serve", "--stt", "dsm-test/no-such-model", "--port", "0"), 3, "no-such-model"),
                 (("serve", "--stt", tiny_stt, "--port", "0", "--quantize", "int3"), 2, "int3")]
        for args, code, fragment in cases:
            proc = run_dsm(*args, timeout=IO_SECONDS)
            lines = proc.stderr.decode().splitlines()
            assert proc.returncode == code and len(lines) == 1, (args, proc.stderr)
            assert lines[0].startswith("dsm: error: ") and fragment in lines[0]


def post(server: Server, path: str, data: bytes, content_type: str) -> bytes:
    request = urllib.request.Request(f"{server.http}{path}", data=data, method="POST",
                                     headers={"kyutai-api-key": KEY, "Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=IO_SECONDS) as response:
        return response.read()


def test_kyutai_http_forms(server, clip_file, transcribed, spoken):
    with open(clip_file, "rb") as audio:
        messages = json.loads(post(server, "/api/asr-streaming", audio.read(), "application/octet-stream"))
    assert words_of(messages) == transcribed
    body = json.dumps({"text": TEXT, "voice": "voices/alice.wav"}).encode()
    samples, rate = soundfile.read(__import__("io").BytesIO(post(server, "/api/tts_streaming", body,
                                                                   "application/json")), dtype="float32")
    assert rate == 24000 and samples.shape == spoken.shape and np.abs(samples - spoken).max() <= 1e-4


def test_openai_speech_as_server_sent_events(server, spoken):
    import base64

    body = json.dumps({"model": "dsm", "input": TEXT, "voice": "voices/alice.wav", "response_format": "pcm",
                       "stream_format": "sse"}).encode()
    request = urllib.request.Request(f"{server.http}/v1/audio/speech", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=IO_SECONDS) as response:
        events = [json.loads(line[len(b"data: "):]) for line in response.read().splitlines() if line]
    assert events[-1]["type"] == "speech.audio.done"
    raw = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    samples = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    assert samples.shape == spoken.shape and np.abs(samples - spoken).max() <= 1e-4
