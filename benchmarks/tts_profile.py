"""Where a TTS step's time goes: backbone, depformer, sampling, Mimi decode (random weights, one process).

    python benchmarks/tts_profile.py [--model tts-1.6b-en_fr] [--quantize int8] [--steps 8] [--warmup 2]
                                     [--rounds 2] [--modes torch,native] [--threads N] [--torch-profile]

Builds the model as ``dsm bench --random-weights`` does, runs the ``tts`` bench path at batch 1 and splits
each steady-state step (audio delay over: the depformer runs) into: the backbone (embeddings, transformer,
text head), sampling (text and audio), the depformer's sub-steps (the network) and Mimi's streaming decode;
also the time to the first audio of a fresh stream. ``--modes``: the depformer's torch path and its native
sub-steps, interleaved round by round in the same process (so machine load hits both alike). ``--torch-profile`` also prints torch's profiler table (top ops by self CPU time) for a few steps.
A measurement, not a test: on a shared machine compare figures from the same run only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

from dsmcli.bench.models import load_bench_model
from dsmcli.bench.paths import TtsRunner
from dsmcli.engine import stream
from dsmcli.engine.quantize import QuantMethod

MS = 1e3


class Timers:
    """Seconds per part, summed while ``on``."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.on = False

    @contextmanager
    def __call__(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.on:
                self.totals[name] += time.perf_counter() - started


def instrument(runner: TtsRunner, timers: Timers) -> None:
    """Wrap the step's parts with timers (the same objects the step calls)."""
    lm_stream, lm = runner.stream, runner.model.lm
    model_step = lm_stream._model_step

    def timed_model_step(*args, **kwargs):
        with timers("backbone"):
            return model_step(*args, **kwargs)

    lm_stream._model_step = timed_model_step
    depformer = lm.depformer
    logits = depformer.logits if depformer is not None else None
    if logits is not None:
        def timed_logits(*args, **kwargs):
            with timers("depformer network"):
                return logits(*args, **kwargs)
        depformer.logits = timed_logits
    original_sample = stream.sample_token

    def timed_sample(*args, **kwargs):
        with timers("sampling"):
            return original_sample(*args, **kwargs)

    stream.sample_token = timed_sample
    decode = runner.model.mimi.decode_step

    def timed_decode(*args, **kwargs):
        with timers("mimi decode"):
            return decode(*args, **kwargs)

    runner.model.mimi.decode_step = timed_decode


def run_round(runner: TtsRunner, steps: int, warmup: int, timers: Timers) -> tuple[float, list[float]]:
    """A fresh stream: (seconds to the first audio, steady-state step seconds); ``timers`` get the steady steps."""
    runner.start()
    started = time.perf_counter()
    for _ in range(runner.first_output_steps):
        runner.step()
    first = time.perf_counter() - started
    for _ in range(warmup):
        runner.step()
    timers.on = True
    walls = []
    for _ in range(steps):
        started = time.perf_counter()
        runner.step()
        walls.append(time.perf_counter() - started)
    timers.on = False
    return first, walls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tts-1.6b-en_fr")
    parser.add_argument("--quantize", default="int8", choices=[m.value for m in QuantMethod])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--modes", default="torch,native", help="depformer paths compared, interleaved per round")
    parser.add_argument("--torch-profile", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = load_bench_model(args.model, torch.device("cpu"), torch.float32, random_weights=True,
                             quantize=QuantMethod(args.quantize))
    print(f"{args.model} {args.quantize}: loaded in {time.perf_counter() - started:.1f} s, "
          f"{torch.get_num_threads()} threads", flush=True)
    runner = TtsRunner(model, 1, 0)
    modes = args.modes.split(",")
    timers = {mode: Timers() for mode in modes}
    current = Timers()
    instrument(runner, current)
    firsts: dict[str, list[float]] = defaultdict(list)
    walls: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.rounds):
        for mode in modes:
            if model.lm.depformer is not None:
                model.lm.depformer.native_step = mode == "native"
            current.totals, current.on = timers[mode].totals, False
            first, steady = run_round(runner, args.steps, args.warmup, current)
            firsts[mode].append(first)
            walls[mode] += steady
    for mode in modes:
        total = sum(walls[mode])
        print(f"[{mode} depformer] steady step median {statistics.median(walls[mode]) * MS:.1f} ms, first audio "
              f"median {statistics.median(firsts[mode]) * MS:.0f} ms ({runner.first_output_steps} steps)")
        accounted = 0.0
        for name, seconds in timers[mode].totals.items():
            accounted += seconds
            print(f"  {name:<20} {seconds / len(walls[mode]) * MS:7.1f} ms/step ({100 * seconds / total:4.1f} %)")
        print(f"  {'rest (python etc.)':<20} {(total - accounted) / len(walls[mode]) * MS:7.1f} ms/step")
    if args.torch_profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                runner.step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
