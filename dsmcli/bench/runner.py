"""``dsm bench``: per path and batch size, how fast this device runs a model (warm-up reported apart).

For every (path, batch) configuration (paths: :mod:`dsmcli.bench.paths`, each the step the commands run, on
their scheduler):

1. warm-up: ``warmup`` steps of a fresh stream (first-call costs: allocation, kernel selection, compile);
2. latency: a new fresh stream, stepped until its first word / first audio is out (``first_output_ms``); the
   tts path's voice was made once before (``voice_projection_ms``: its cross-attention source projected, what a
   never-seen voice adds to its first audio);
3. steady state: ``steps`` more steps of that stream, each timed alone (device synchronised before every
   timer read), giving the median and spread of ms per step.

One step is one 80 ms frame of audio per stream, so ``x_realtime = 80 ms / step time`` (audio seconds per
compute second), ``rtf = 1 / x_realtime`` (compute / audio: piper's and coqui's "real-time factor"),
``throughput_x_realtime = x_realtime * batch`` and ``stream_steps_per_s = batch * 1000 / step ms``.

JSON output (``--json``; :data:`SCHEMA_VERSION`), documented in benchmarks/README.md::

    {"schema": "dsm-bench", "version": 1, "model": str, "random_weights": bool, "model_type": "stt"|"tts",
     "params": int, "device": str, "dtype": str, "quantize": "none"|"int8"|"int4", "quantize_kernel": str|null,
     "threads": int, "torch": str, "platform": str, "load_seconds": float, "load_average": [start, end]|null,
     "results": [{"path": str, "batch": int, "steps": int, "ms_per_step": {"median", "p10", "p90", "min",
                  "max", "mean"}, "x_realtime": float, "rtf": float, "throughput_x_realtime": float,
                  "stream_steps_per_s": float, "first_output_ms": float, "first_output_steps": int,
                  "warmup_steps": int, "warmup_ms": float, "warmup_first_step_ms": float,
                  "peak_memory_mb": float, "memory_measure": "process_peak_rss"|"device_max_allocated",
                  "voice_projection_ms": float|null}]}
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import torch

from dsmcli.bench.models import BenchModel, load_bench_model
from dsmcli.bench.paths import CODEC_PATHS, BenchPath, default_paths, make_runner, synchronize
from dsmcli.constants import FRAME_RATE
from dsmcli.engine.quantize import QuantMethod
from dsmcli.errors import UsageError
from dsmcli.kernels import KernelChoice

SCHEMA_NAME = "dsm-bench"
SCHEMA_VERSION = 1
STEP_SECONDS = float(1 / Fraction(FRAME_RATE))  # audio per step and stream: 0.08 s
MS = 1e3
MB = 2**20  # peak_memory_mb is in MiB (2**20 bytes), not 1e6-byte MB: kept name for the JSON schema
RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
SPREAD = (0.1, 0.9)  # quantiles reported as the spread


@dataclass(frozen=True)
class BenchOptions:
    """``paths`` None = the model's task path plus the codec; ``threads`` None = torch's default."""

    model: str
    batch_sizes: tuple[int, ...] = (1,)
    paths: tuple[BenchPath, ...] | None = None
    steps: int = 20
    warmup: int = 3
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    random_weights: bool = False
    quantize: QuantMethod = QuantMethod.NONE
    threads: int | None = None
    seed: int = 0
    kernels: KernelChoice = KernelChoice.AUTO  # --kernels: every path runs under it

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise UsageError(f"--batch needs positive batch sizes, got {list(self.batch_sizes)}")
        if self.steps < 1 or self.warmup < 0:
            raise UsageError(f"--steps must be >= 1 and --warmup >= 0 (got {self.steps}, {self.warmup})")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class StepStats:
    """Milliseconds per step over the steady-state steps."""

    median: float
    p10: float
    p90: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> StepStats:
        ordered = sorted(samples_ms)
        low, high = (ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in SPREAD)
        return cls(statistics.median(ordered), low, high, ordered[0], ordered[-1], statistics.fmean(ordered))


@dataclass(frozen=True)
class BenchResult:
    path: BenchPath
    batch: int
    steps: int
    ms_per_step: StepStats
    first_output_ms: float
    first_output_steps: int
    warmup_steps: int
    warmup_ms: float
    warmup_first_step_ms: float
    peak_memory_mb: float
    memory_measure: str
    voice_projection_ms: float | None = None  # tts: the voice made once (cross-attention source projected)

    @property
    def x_realtime(self) -> float:
        return STEP_SECONDS * MS / self.ms_per_step.median

    @property
    def rtf(self) -> float:
        return self.ms_per_step.median / (STEP_SECONDS * MS)

    @property
    def throughput_x_realtime(self) -> float:
        return self.x_realtime * self.batch

    @property
    def stream_steps_per_s(self) -> float:
        return self.batch * MS / self.ms_per_step.median

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = self.path.value
        data.update(x_realtime=self.x_realtime, rtf=self.rtf, throughput_x_realtime=self.throughput_x_realtime,
                    stream_steps_per_s=self.stream_steps_per_s)
        return data


@dataclass(frozen=True)
class BenchReport:
    model: str
    model_type: str
    random_weights: bool
    params: int
    device: str
    dtype: str
    quantize: str
    quantize_kernel: str | None
    threads: int
    load_seconds: float
    results: tuple[BenchResult, ...]
    load_average: tuple[float, float] | None = None  # 1-minute load at start and end (None: not available)
    torch_version: str = torch.__version__
    platform_name: str = field(default_factory=platform.platform)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema": SCHEMA_NAME, "version": SCHEMA_VERSION}
        data.update({k: v for k, v in asdict(self).items() if k not in ("results", "torch_version", "platform_name")})
        data.update(torch=self.torch_version, platform=self.platform_name)
        data["results"] = [result.to_json() for result in self.results]
        return data


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MB, "device_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT / MB, "process_peak_rss"


def _timed(step: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return (time.perf_counter() - start) * MS


def measure(path: BenchPath, model: BenchModel, batch: int, options: BenchOptions) -> BenchResult:
    """Warm-up, latency to the first output, then ``options.steps`` timed steady-state steps."""
    device = model.lm.device
    runner = make_runner(path, model, batch, options.seed)
    _reset_peak(device)
    runner.start()
    warm = [_timed(runner.step, device) for _ in range(options.warmup)]
    runner.start()
    first = sum(_timed(runner.step, device) for _ in range(runner.first_output_steps))
    samples = [_timed(runner.step, device) for _ in range(options.steps)]
    peak, measure_kind = _peak_memory(device)
    return BenchResult(path, batch, options.steps, StepStats.of(samples), first, runner.first_output_steps,
                       options.warmup, sum(warm), warm[0] if warm else 0.0, peak, measure_kind,
                       runner.voice_projection_ms)


def _paths(options: BenchOptions, model: BenchModel) -> tuple[BenchPath, ...]:
    paths = options.paths or default_paths(model.kind)
    for path in paths:
        if path.needs is not None and path.needs is not model.kind:
            raise UsageError(f"path {path.value} needs a {path.needs.value} model; {model.name} is {model.kind.value}")
    return paths


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def run_bench(options: BenchOptions, progress: Callable[[str], None] | None = None) -> BenchReport:
    """Load (or build) the model once, then measure every (path, batch) configuration in order."""
    load_before = _load_average()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    model = load_bench_model(options.model, options.device, options.dtype, random_weights=options.random_weights,
                             quantize=options.quantize, seed=options.seed, kernels=options.kernels,
                             encodes_audio=BenchPath.CODEC_ENCODE in (options.paths or CODEC_PATHS))
    paths = _paths(options, model)
    results = []
    for path in paths:
        for batch in options.batch_sizes:
            if progress is not None:
                progress(f"{path.value} batch {batch}")
            results.append(measure(path, model, batch, options))
    quant, load_after = model.quantization, _load_average()
    load = None if load_before is None or load_after is None else (load_before, load_after)
    return BenchReport(
        model=model.name, model_type=model.kind.value, random_weights=model.random_weights, params=model.params,
        device=str(options.device), dtype=str(options.dtype).removeprefix("torch."), quantize=options.quantize.value,
        quantize_kernel=None if quant is None else quant.kernel_used, threads=torch.get_num_threads(),
        load_seconds=model.load_seconds, results=tuple(results), load_average=load)


def parse_paths(text: str | None) -> tuple[BenchPath, ...] | None:
    """``stt,tts,codec`` (codec = encode and decode) -> paths; None/empty = the model's default."""
    if not text:
        return None
    paths: list[BenchPath] = []
    for name in (part.strip() for part in text.split(",") if part.strip()):
        if name == "codec":
            paths.extend(CODEC_PATHS)
            continue
        try:
            paths.append(BenchPath(name))
        except ValueError:
            known = ", ".join(["codec", *(p.value for p in BenchPath)])
            raise UsageError(f"unknown path {name!r} (choose from {known})") from None
    return tuple(dict.fromkeys(paths))


def parse_batches(text: str) -> tuple[int, ...]:
    """``1,8,32`` -> (1, 8, 32)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--batch takes comma-separated integers, got {text!r}") from None
