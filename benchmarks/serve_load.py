"""Load test of ``dsm serve`` on loopback: N concurrent real-time STT clients (Kyutai's WebSocket protocol).

    python benchmarks/serve_load.py --random-weights stt-1b-en_fr --quantize int8 --streams 1,2,4,8 --seconds 20
    python benchmarks/serve_load.py --url ws://127.0.0.1:8080 --api-key KEY --streams 4,8 [--tts-voice NAME]

Each client sends ``--seconds`` of speech (``../shared/data/bria.mp3``) in 80 ms messages at real time, starts
at a random moment within the first second, then sends ``Eos``. Word latency = arrival of the word's message
minus the moment its last sample (``stop_time``) was sent (a word is final at the next word boundary, so this
includes the model's delay and the next word; with random weights word boundaries are rare, so read the step
latency instead: arrival of a ``Step`` message minus the moment the last sample of its frame was sent, i.e.
the server's processing delay, to which the model adds its fixed text delay). A stream keeps up when the audio the server holds unprocessed
(``Step.buffered_pcm``, models with VAD heads) and the time from its ``Eos`` to the server's close (the delay's
silence suffix, processed as fast as the engine can) both stay under ``--max-latency`` (default 1.5 s). For each N the table gives p50 / p95 word latency over all streams, the worst final lag and
whether every stream kept up; the last line is the largest N that kept up. With a TTS model on the server
(``--tts-voice``), one Kyutai TTS request runs during each load level and its first-audio latency is reported.

A 2 s warm-up stream runs first and is not measured (the first steps build the native kernels).

``--random-weights MODEL`` starts a server in a child process with the released architecture and random
weights (nothing is downloaded: the words are meaningless, their cost is real), with ``--quantize`` and
``--threads``. Everything is bounded: at most ``--max-clients`` clients, 120 s of audio, per-message timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # this checkout's dsmcli, also in the server child process
    sys.path.insert(0, str(REPO))

FRAME = 1920
SAMPLE_RATE = 24000
SHARED_AUDIO = REPO.parent / "shared" / "data" / "bria.mp3"
RECV_TIMEOUT = 120.0
WARMUP_SECONDS = 2


@dataclass
class StreamStats:
    latencies: list[float] = field(default_factory=list)
    step_latencies: list[float] = field(default_factory=list)
    final_lag: float = float("inf")
    backlog: float = 0.0  # largest audio the server held unprocessed (s), from Step messages (VAD models)
    error: str | None = None


class _StubTokenizer:
    """Random weights emit arbitrary text tokens: name each piece ``t<id>`` (a new word every piece)."""

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"t{i}" for i in ids)

    def id_to_piece(self, index: int) -> str:
        return f"\u2581t{index}"

    def encode(self, text: str) -> list[int]:
        return [0] * max(1, len(text.split()))

    def eos_id(self) -> int:
        return -1


def serve_random(args: argparse.Namespace) -> None:
    """Child process: a server on the random-weights model (registry architecture), until SIGINT/SIGTERM."""
    import torch

    from dsmcli.bench.models import load_bench_model
    from dsmcli.engine.quantize import QuantMethod
    from dsmcli.serve.config import ServeOptions
    from dsmcli.serve.run import serve
    from dsmcli.serve.state import ServeState
    from dsmcli.stt import SttModel
    from dsmcli.stt.session import SttEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    bench = load_bench_model(args.random_weights, torch.device("cpu"), torch.float32, random_weights=True,
                             quantize=QuantMethod(args.quantize))
    model = SttModel(bench.checkpoint, bench.mimi, bench.lm, _StubTokenizer(), bench.stt_timing)
    options = ServeOptions(port=args.port, max_streams=args.max_clients, max_connections=args.max_clients + 8)
    serve(ServeState(options, stt=SttEngine(model, batch_size=args.max_clients)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_random_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, __file__, "--_serve", "--random-weights", args.random_weights, "--quantize",
               args.quantize, "--port", str(port), "--max-clients", str(args.max_clients)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, f"ws://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the random-weights server did not start")


def load_audio(seconds: float) -> np.ndarray:
    from dsmcli.audio import open_audio

    with open_audio(str(SHARED_AUDIO)) as source:
        audio = np.concatenate(list(source))
    need = int(seconds * SAMPLE_RATE)
    return np.resize(audio, need).astype(np.float32)  # repeats the file when it is shorter


async def stt_client(url: str, headers: dict, audio: np.ndarray, start_delay: float, prefix: float) -> StreamStats:
    import websockets

    stats = StreamStats()
    await asyncio.sleep(start_delay)
    async with websockets.connect(f"{url}/api/asr-streaming", additional_headers=headers, max_size=None) as ws:
        t0 = time.monotonic()

        async def send() -> float:
            for i in range(0, len(audio), FRAME):
                chunk_end = min(i + FRAME, len(audio)) / SAMPLE_RATE  # sent once "recorded", as a live source
                await asyncio.sleep(max(0.0, t0 + chunk_end - time.monotonic()))
                await ws.send(msgpack.packb({"type": "Audio", "pcm": audio[i:i + FRAME].tolist()},
                                            use_single_float=True))
            await ws.send(msgpack.packb({"type": "Eos"}))
            return time.monotonic()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                message = msgpack.unpackb(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT), raw=False)
                if message["type"] == "Step":
                    stats.backlog = max(stats.backlog, message["buffered_pcm"] / SAMPLE_RATE)
                    frame_end = (message["step_idx"] + 1) * FRAME / SAMPLE_RATE - prefix  # its last sample
                    if 0 < frame_end <= len(audio) / SAMPLE_RATE:
                        stats.step_latencies.append(time.monotonic() - (t0 + frame_end))
                elif message["type"] == "EndWord":
                    stats.latencies.append(time.monotonic() - (t0 + message["stop_time"]))
                elif message["type"] == "Error":
                    stats.error = message["message"]
        except (websockets.ConnectionClosed, asyncio.TimeoutError):
            pass
        if sender.done() and not sender.cancelled() and sender.exception() is None:
            stats.final_lag = time.monotonic() - sender.result()
        sender.cancel()
    return stats


async def tts_first_audio(url: str, headers: dict, voice: str) -> float:
    import websockets

    query = f"voice={voice}&format=PcmMessagePack"
    async with websockets.connect(f"{url}/api/tts_streaming?{query}", additional_headers=headers) as ws:
        started = time.monotonic()
        await ws.send(msgpack.packb({"type": "Text", "text": "Hello, this is a short test of the speech server."}))
        await ws.send(msgpack.packb({"type": "Eos"}))
        while True:
            message = msgpack.unpackb(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT), raw=False)
            if message["type"] == "Audio":
                return time.monotonic() - started


async def run_level(args: argparse.Namespace, url: str, audio: np.ndarray, n: int) -> dict:
    headers = {"kyutai-api-key": args.api_key} if args.api_key else {}
    rng = random.Random(n)
    clients = [stt_client(url, headers, audio, rng.random(), args.prefix_seconds) for _ in range(n)]
    tts = [tts_first_audio(url, headers, args.tts_voice)] if args.tts_voice else []
    results = await asyncio.gather(*clients, *tts, return_exceptions=True)
    streams = [r for r in results[:n] if isinstance(r, StreamStats)]
    latencies = sorted(x for s in streams for x in s.latencies)
    steps = sorted(x for s in streams for x in s.step_latencies)
    kept = len(streams) == n and all(
        s.error is None and s.final_lag <= args.max_latency and s.backlog <= args.max_latency for s in streams)
    row = {"streams": n, "words": len(latencies), "kept_up": bool(kept),
           "p50_latency_s": statistics.median(latencies) if latencies else None,
           "p95_latency_s": float(np.percentile(latencies, 95)) if latencies else None,
           "p50_step_latency_s": statistics.median(steps) if steps else None,
           "p95_step_latency_s": float(np.percentile(steps, 95)) if steps else None,
           "worst_final_lag_s": max((s.final_lag for s in streams), default=None),
           "worst_backlog_s": max((s.backlog for s in streams), default=None),
           "errors": sorted({s.error for s in streams if s.error} | {repr(r) for r in results if isinstance(r, Exception)})}
    if tts:
        row["tts_first_audio_s"] = results[n] if isinstance(results[n], float) else None
    return row


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (ws://host:port); default: start one (--random-weights)")
    parser.add_argument("--random-weights", metavar="MODEL", help="serve this registry architecture, random weights")
    parser.add_argument("--quantize", default="none", choices=["none", "int8", "int4"])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--api-key")
    parser.add_argument("--streams", default="1,2,4,8", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per client (at most 120)")
    parser.add_argument("--max-latency", type=float, help="keep-up bound (s), default 1.5")
    parser.add_argument("--max-clients", type=int, default=32, help="upper bound on any --streams value")
    parser.add_argument("--prefix-seconds", type=float, default=0.0,
                        help="the model's silence prefix (stt-1b 0, stt-2.6b 1.0), for step latencies")
    parser.add_argument("--tts-voice", help="also time one TTS request per level with this voice")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--_serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._serve:
        return serve_random(args)
    counts = [int(x) for x in args.streams.split(",")]
    if max(counts) > args.max_clients or args.seconds > 120 or min(counts) < 1:
        raise SystemExit("--streams values must be within 1..--max-clients and --seconds at most 120")
    args.max_latency = args.max_latency if args.max_latency is not None else 1.5
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` / kill: still stop the server child
    process, url = (None, args.url) if args.url else start_random_server(args)
    try:
        audio = load_audio(args.seconds)
        headers = {"kyutai-api-key": args.api_key} if args.api_key else {}
        warm = time.monotonic()  # first steps build the native kernels and warm the caches: not measured
        asyncio.run(stt_client(url, headers, audio[: WARMUP_SECONDS * SAMPLE_RATE], 0.0, args.prefix_seconds))
        print(f"warm-up stream: {time.monotonic() - warm:.1f} s", file=sys.stderr)
        rows = [asyncio.run(run_level(args, url, audio, n)) for n in counts]
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
    if args.json:
        print(json.dumps(rows, indent=1))
    for row in rows:
        p50, p95 = _ms(row["p50_latency_s"]), _ms(row["p95_latency_s"])
        s50, s95 = _ms(row["p50_step_latency_s"]), _ms(row["p95_step_latency_s"])
        print(f"N={row['streams']:3d}  words={row['words']:5d}  word latency p50={p50} p95={p95}  "
              f"step latency p50={s50} p95={s95}  final lag={row['worst_final_lag_s']:.2f} s  "
              f"backlog={row['worst_backlog_s']:.2f} s  "
              f"kept up={row['kept_up']}" + (f"  tts first audio={row.get('tts_first_audio_s')}" if args.tts_voice
                                              else "") + (f"  errors={row['errors']}" if row["errors"] else ""))
    kept = [row["streams"] for row in rows if row["kept_up"]]
    print(f"largest N that kept up: {max(kept) if kept else 'none'} (max latency {args.max_latency} s, "
          f"{args.seconds:g} s of audio per client, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
