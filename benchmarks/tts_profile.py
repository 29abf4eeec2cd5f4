"""Where a TTS step's time goes: backbone, depformer, sampling, Mimi decode (random weights, one process).

    python benchmarks/tts_profile.py [--model tts-1.6b-en_fr] [--quantize int8] [--steps 8] [--warmup 2]
                                     [--threads N] [--torch-profile]

Builds the model as ``dsm bench --random-weights`` does, runs the ``tts`` bench path at batch 1 and splits
each steady-state step (audio delay over: the depformer runs) into: the backbone (embeddings, transformer,
text head), text sampling, the depformer's sub-steps (the network) and their sampling, and Mimi's streaming
decode. ``--torch-profile`` also prints torch's profiler table (top ops by self CPU time) for a few steps.
A measurement, not a test: on a shared machine compare figures from the same run only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

from dsmcli.bench_models import load_bench_model
from dsmcli.bench_paths import TtsRunner
from dsmcli.engine import stream
from dsmcli.engine.quantize import QuantMethod

MS = 1e3


class Timers:
    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tts-1.6b-en_fr")
    parser.add_argument("--quantize", default="int8", choices=[m.value for m in QuantMethod])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--torch-profile", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = load_bench_model(args.model, torch.device("cpu"), torch.float32, random_weights=True,
                             quantize=QuantMethod(args.quantize))
    print(f"loaded in {time.perf_counter() - started:.1f} s, {torch.get_num_threads()} threads", flush=True)
    runner = TtsRunner(model, 1, 0)
    runner.start()
    early = []
    for _ in range(runner.first_output_steps):
        started = time.perf_counter()
        runner.step()
        early.append(time.perf_counter() - started)
    print(f"first audio after {runner.first_output_steps} steps: {sum(early) * MS:.0f} ms "
          f"(steps: {', '.join(f'{t * MS:.0f}' for t in early)})", flush=True)
    for _ in range(args.warmup):
        runner.step()
    timers = Timers()
    instrument(runner, timers)
    walls = []
    for _ in range(args.steps):
        started = time.perf_counter()
        runner.step()
        walls.append(time.perf_counter() - started)
    total = sum(walls)
    print(f"steady step: median {statistics.median(walls) * MS:.1f} ms, mean {total / len(walls) * MS:.1f} ms")
    accounted = 0.0
    for name, seconds in timers.totals.items():
        accounted += seconds
        print(f"  {name:<20} {seconds / len(walls) * MS:7.1f} ms/step ({100 * seconds / total:4.1f} %)")
    print(f"  {'other (python etc.)':<20} {(total - accounted) / len(walls) * MS:7.1f} ms/step")
    if args.torch_profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                runner.step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
