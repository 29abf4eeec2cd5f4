"""Where a TTS step's time goes: backbone, the depformer's sequential sub-steps, sampling, Mimi decode, the rest.

    python benchmarks/tts_breakdown.py [--model tts-1.6b-en_fr] [--quantize int8] [--batch 1] [--steps 8]
                                     [--threads 2] [--table 25]

Runs ``dsm bench``'s TTS path (:class:`dsmcli.bench.paths.TtsRunner`: the LM step with the depformer sampling
every generated codebook, then Mimi's streaming decode of the time-aligned frame) on random weights, past the
first audio, then times ``--steps`` steady-state steps. Each part is timed by wrapping the method that runs it
(wall clock, perf_counter):

* backbone: ``LM.step`` (embeddings, transformer, text head);
* depformer: ``LMStream._depformer`` (its ``G`` sequential sub-steps), of which sampling (``sample_token``) is
  reported apart;
* text sampling: ``sample_token`` outside the depformer;
* Mimi decode: ``Mimi.decode_step``;
* other: the rest of the step (token rings, hooks, the frame read back).

Python overhead is estimated with ``torch.profiler`` over the same number of steps: the shares of the time spent
in the products (native kernels, attention, BLAS), in all the other small operators (their dispatch included)
and outside any operator (the interpreter between them).
A measurement, never a unit test; loads a real-size model: wrap it in ``flock /tmp/bigmodel.lock`` on a shared
machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import dsmcli.engine.stream as stream_module  # noqa: E402
from dsmcli.bench.models import load_bench_model  # noqa: E402
from dsmcli.bench.paths import TtsRunner  # noqa: E402
from dsmcli.codec import Mimi  # noqa: E402
from dsmcli.engine.lm import LM  # noqa: E402
from dsmcli.engine.quantize import QuantMethod  # noqa: E402

PARTS = ("backbone", "depformer", "depformer sampling", "text sampling", "mimi decode")


class Clock:
    """Wall ms per part in the current step; ``depth`` tells sampling inside the depformer from text sampling."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = defaultdict(float)
        self.in_depformer = False

    def wrap(self, owner: object, name: str, part: str | None) -> None:
        original = getattr(owner, name)
        clock = self

        def timed(*args, **kwargs):
            label = part or ("depformer sampling" if clock.in_depformer else "text sampling")
            if part == "depformer":
                clock.in_depformer = True
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                clock.ms[label] += (time.perf_counter() - start) * 1e3
                if part == "depformer":
                    clock.in_depformer = False

        setattr(owner, name, timed)


def instrument() -> Clock:
    clock = Clock()
    clock.wrap(LM, "step", "backbone")  # before the stream is made: it keeps the bound method
    clock.wrap(stream_module.LMStream, "_depformer", "depformer")
    clock.wrap(stream_module, "sample_token", None)
    clock.wrap(Mimi, "decode_step", "mimi decode")
    return clock


WORK_OPS = ("dsmcli_", "aten::_scaled_dot_product", "aten::mm", "aten::addmm", "aten::bmm")  # the products


def overhead_shares(step: Callable[[], None], steps: int) -> tuple[dict[str, float], object]:
    """Under ``torch.profiler`` over ``steps`` steps: the shares of the profiled wall time spent in the products
    (native kernels, attention, BLAS), in all other (small) operators, and outside any operator (the interpreter
    between ops), plus the small operators' calls per step; and the profiler (for its table). Shares, not times:
    the profiler slows small ops more than products, so they are upper bounds for the small ops."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall_us = (time.perf_counter() - start) * 1e6
    work = small = calls = 0.0
    for entry in prof.key_averages():
        if entry.key.startswith(WORK_OPS):
            work += entry.self_cpu_time_total
        else:
            small += entry.self_cpu_time_total
            calls += entry.count
    between = max(0.0, wall_us - work - small)
    total = work + small + between
    return {"products": work / total, "small ops": small / total, "between ops": between / total,
            "small op calls per step": calls / steps}, prof


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tts-1.6b-en_fr")
    parser.add_argument("--quantize", default="int8", choices=[m.value for m in QuantMethod])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--table", type=int, default=25, help="rows of the operator table (0: none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, load {os.getloadavg()[0]:.1f}", flush=True)
    model = load_bench_model(args.model, torch.device("cpu"), torch.float32, random_weights=True,
                             quantize=QuantMethod(args.quantize))
    clock = instrument()
    runner = TtsRunner(model, args.batch, seed=0)
    runner.start()
    for _ in range(runner.first_output_steps + 2):  # past the first audio: every step decodes
        runner.step()
    totals, parts = [], defaultdict(list)
    for _ in range(args.steps):
        clock.ms.clear()
        start = time.perf_counter()
        runner.step()
        totals.append((time.perf_counter() - start) * 1e3)
        for part in PARTS:
            parts[part].append(clock.ms.get(part, 0.0))
    step_ms = statistics.fmean(totals)  # means: the parts add up to the step
    print(f"\n{args.model} {args.quantize} batch {args.batch}: {step_ms:.1f} ms per step (mean of {args.steps}; "
          f"median {statistics.median(totals):.1f}; {args.threads} threads, load {os.getloadavg()[0]:.1f})")
    accounted = 0.0
    for part in PARTS:
        ms = statistics.fmean(parts[part])
        accounted += ms if part != "depformer sampling" else 0.0  # inside the depformer's time
        print(f"  {part:20s} {ms:7.1f} ms  {100 * ms / step_ms:5.1f} %")
    print(f"  {'other':20s} {step_ms - accounted:7.1f} ms  {100 * (step_ms - accounted) / step_ms:5.1f} %")
    shares, prof = overhead_shares(runner.step, args.steps)
    calls = shares.pop("small op calls per step")
    print("  under torch.profiler: " + ", ".join(f"{name} {100 * share:.1f} %" for name, share in shares.items())
          + f"; {calls:.0f} small op calls per step")
    if args.table:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
