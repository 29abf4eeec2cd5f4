"""Mimi speed, ours vs the reference (``moshi``), on the same real-size weights, in the same run.

    python benchmarks/codec_speed.py [--mimi FILE] [--threads 2] [--rounds 3] [--seconds 4]
                                     [--batches 1 8] [--json results.json] [--decode-ab]

Streaming encode and decode of real speech (bria.mp3), one 80 ms frame of each of ``B`` streams per
call, and one-shot encode and decode of a whole clip. Figures are wall ms per call (streaming; per
stream-frame = call / B) or per frame (one-shot). Each round runs ours then the reference on the same
input, so load changes hit both alike; a figure is the median over the timed calls of all rounds (the
first call of each round, the warm-up, is kept apart in ``--json``).

On a shared machine prefer ``--threads 1``, or ``OMP_WAIT_POLICY=PASSIVE`` in the environment: with the
default (spinning) policy, 2 threads on 2 busy cores make every parallel op wait for a time slice (ours went
from ~100 to ~500 ms per encoded frame at load 7; the reference suffers alike).

``--decode-ab`` instead times our streaming decode against itself with the SEANet decoder run layer by layer as
before session 5 (each conv one native call, ELUs, residual adds and transposed convs in torch), interleaved in
one process, with the process CPU time per frame (all threads) next to the wall time: the figure to trust when
other jobs share the machine.

Weights: ``--mimi FILE`` (a Mimi in the released layout, e.g. the test suite's
``tests/.fixtures/real-mimi-*/…safetensors``), else that test fixture if present, else a real-size random
Mimi built by ``tools/make_fixtures.py`` (``make_real_mimi``, ~1 min, written to a temp dir).
A measurement, never a unit test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from fixturelib.audio import SHARED_DATA, speech_24k  # noqa: E402

from dsmcli.codec import Mimi  # noqa: E402
from dsmcli.hub.loaders import load_mimi

SPEECH = "bria.mp3"
FIXTURE_GLOB = "tests/.fixtures/real-mimi-*/*.safetensors"
TARGET_ENCODE_SPEEDUP = 4.0  # issue 6: streaming encode at least 4x the reference's speed


@dataclass(frozen=True)
class Timing:
    """Wall ms per call, pooled over rounds (warm-up call of each round apart)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    first_ms: float
    calls: int

    @classmethod
    def of(cls, samples: list[float], firsts: list[float]) -> Timing:
        ordered = sorted(samples)

        def pick(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return cls(statistics.median(ordered), pick(0.1), pick(0.9), statistics.median(firsts), len(ordered))


@dataclass(frozen=True)
class Comparison:
    what: str
    batch: int
    ours: Timing
    ref: Timing

    @property
    def speedup(self) -> float:
        return self.ref.median_ms / self.ours.median_ms


Run = Callable[[], list[float]]  # one round: ms of every call, the first being the warm-up


def timed_calls(call: Callable[[int], object], count: int) -> list[float]:
    times = []
    for index in range(count):
        start = time.perf_counter()
        call(index)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def interleaved(ours: Run, ref: Run, rounds: int) -> tuple[Timing, Timing]:
    pooled: dict[str, tuple[list[float], list[float]]] = {"ours": ([], []), "ref": ([], [])}
    for _ in range(rounds):
        for name, run in (("ours", ours), ("ref", ref)):
            times = run()
            pooled[name][0].extend(times[1:])
            pooled[name][1].append(times[0])
    return Timing.of(*pooled["ours"]), Timing.of(*pooled["ref"])


# ------------------------------------------------------------------------------------------ contenders


def streaming_encode(ref, ours: Mimi, frames: torch.Tensor) -> tuple[Run, Run]:
    """frames ``[F, B, 1, frame_size]``."""

    def run_ours() -> list[float]:
        state = ours.init_state(frames.shape[1])
        return timed_calls(lambda i: ours.encode_step(frames[i], state), len(frames))

    def run_ref() -> list[float]:
        with torch.no_grad(), ref.streaming(frames.shape[1]):
            return timed_calls(lambda i: ref.encode(frames[i]), len(frames))

    return run_ours, run_ref


def streaming_decode(ref, ours: Mimi, codes: torch.Tensor) -> tuple[Run, Run]:
    """codes ``[B, K, F]``, decoded one frame per call."""
    steps = codes.shape[-1]

    def run_ours() -> list[float]:
        state = ours.init_state(codes.shape[0])
        return timed_calls(lambda i: ours.decode_step(codes[..., i : i + 1], state), steps)

    def run_ref() -> list[float]:
        with torch.no_grad(), ref.streaming(codes.shape[0]):
            return timed_calls(lambda i: ref.decode(codes[..., i : i + 1]), steps)

    return run_ours, run_ref


def one_shot(ref, ours: Mimi, wav: torch.Tensor, codes: torch.Tensor) -> dict[str, tuple[Run, Run]]:
    """Whole-clip calls, timed per frame (a warm-up call, then two timed ones)."""
    frames = codes.shape[-1]

    def per_frame(call: Callable[[], object]) -> Run:
        return lambda: [t / frames for t in timed_calls(lambda _i: call(), 3)]

    return {
        "one-shot encode": (per_frame(lambda: ours.encode(wav)), per_frame(lambda: _no_grad(ref.encode, wav))),
        "one-shot decode": (per_frame(lambda: ours.decode(codes)), per_frame(lambda: _no_grad(ref.decode, codes))),
    }


def _no_grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return fn(x)


def decode_ab(ours: Mimi, codes: torch.Tensor, rounds: int) -> None:
    """Our streaming decode, native SEANet decoder vs the layer-by-layer path, interleaved; wall and CPU ms/frame."""
    from dsmcli.codec.conv import CausalConvTranspose1d
    from dsmcli.codec.seanet import SEANetDecoder

    native_plan, native_code = SEANetDecoder._native_plan, CausalConvTranspose1d.native_code

    def run(native: bool) -> list[tuple[float, float]]:
        SEANetDecoder._native_plan = native_plan if native else (lambda self: None)
        CausalConvTranspose1d.native_code = native_code if native else (lambda self: None)
        state, times = ours.init_state(codes.shape[0]), []
        for i in range(codes.shape[-1]):
            wall, cpu = time.perf_counter(), time.process_time()
            ours.decode_step(codes[..., i : i + 1], state)
            times.append(((time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3))
        return times[1:]

    pooled: dict[str, list[tuple[float, float]]] = {"native": [], "layer by layer": []}
    try:
        for _ in range(rounds):
            for name in pooled:
                pooled[name] += run(name == "native")
    finally:
        SEANetDecoder._native_plan, CausalConvTranspose1d.native_code = native_plan, native_code
    for name, times in pooled.items():
        print(f"stream decode B={codes.shape[0]} {name:15s} wall {statistics.median(t[0] for t in times):7.2f} ms  "
              f"CPU {statistics.median(t[1] for t in times):7.2f} ms per call (median of {len(times)})")


# ------------------------------------------------------------------------------------------ main


def speech(seconds: float, batch: int, frame_size: int) -> torch.Tensor:
    """``[B, 1, N]`` real speech, each stream from a different offset, ``N`` a whole number of frames."""
    clips = [speech_24k(SHARED_DATA / SPEECH, seconds, offset=2.0 * b) for b in range(batch)]
    wav = torch.stack([torch.from_numpy(c) for c in clips])[:, None, :]
    return wav[..., : wav.shape[-1] // frame_size * frame_size].contiguous()


def find_weights(explicit: Path | None, tmp: Path) -> Path:
    if explicit is not None:
        return explicit
    cached = sorted(REPO.glob(FIXTURE_GLOB))
    if cached:
        return cached[-1]
    from make_fixtures import make_real_mimi

    print("building a real-size random Mimi (~1 min) ...", flush=True)
    return make_real_mimi(tmp / "mimi.safetensors")


def measure(path: Path, args: argparse.Namespace) -> list[Comparison]:
    from make_fixtures import load_ref_mimi

    ours, ref = load_mimi(path), load_ref_mimi(path, None, 32)
    results = []
    for batch in args.batches:
        wav = speech(args.seconds, batch, ours.frame_size)
        codes = ours.encode(wav)
        frames = wav.unflatten(-1, (-1, ours.frame_size)).permute(2, 0, 1, 3)  # [F, B, 1, frame_size]
        for what, (run_ours, run_ref) in (("stream encode", streaming_encode(ref, ours, frames)),
                                          ("stream decode", streaming_decode(ref, ours, codes))):
            results.append(Comparison(what, batch, *interleaved(run_ours, run_ref, args.rounds)))
            print(f"  {line(results[-1])}", flush=True)
    wav = speech(args.seconds, 1, ours.frame_size)
    for what, (run_ours, run_ref) in one_shot(ref, ours, wav, ours.encode(wav)).items():
        results.append(Comparison(what, 1, *interleaved(run_ours, run_ref, args.rounds)))
        print(f"  {line(results[-1])}", flush=True)
    return results


def line(c: Comparison) -> str:
    per_stream = f"  ({c.ours.median_ms / c.batch:6.2f} vs {c.ref.median_ms / c.batch:6.2f} per stream-frame)" \
        if c.batch > 1 else ""
    return (f"{c.what:15s} B={c.batch:<2d} ours {c.ours.median_ms:7.2f} ms  ref {c.ref.median_ms:7.2f} ms  "
            f"x{c.speedup:4.1f}{per_stream}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mimi", type=Path, help="Mimi weights (released layout); default: see module docstring")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per comparison")
    parser.add_argument("--seconds", type=float, default=4.0, help="speech per stream and round")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="streams per streaming call")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--decode-ab", action="store_true",
                        help="only: our streaming decode, native SEANet decoder vs layer by layer (see above)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores, load {load_before:.1f}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="dsm-codec-speed-") as tmp:
        path = find_weights(args.mimi, Path(tmp))
        print(f"weights: {path}")
        if args.decode_ab:
            ours = load_mimi(path)
            for batch in args.batches:
                decode_ab(ours, ours.encode(speech(args.seconds, batch, ours.frame_size)), args.rounds)
            return 0
        results = measure(path, args)
    load_after = os.getloadavg()[0]
    print(f"\nms per call (B frames), medians of {args.rounds} interleaved rounds, {args.threads} threads, "
          f"load {load_before:.1f} -> {load_after:.1f}, {time.time() - started:.0f} s")
    for result in results:
        print(line(result))
    encode = next(r for r in results if r.what == "stream encode" and r.batch == 1)
    print(f"streaming encode speed-up x{encode.speedup:.2f} (target x{TARGET_ENCODE_SPEEDUP:.0f})")
    if args.json:
        payload = {"threads": args.threads, "rounds": args.rounds, "seconds": args.seconds,
                   "load": [load_before, load_after],
                   "results": [asdict(r) | {"speedup": r.speedup} for r in results]}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
