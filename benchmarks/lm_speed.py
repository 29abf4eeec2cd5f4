"""LM step speed, ours vs the reference (``moshi``), on one set of random weights, interleaved, in one run.

    python benchmarks/lm_speed.py [--arch stt-1b-en_fr] [--batches 1,8,16] [--dtypes float32,bfloat16,int8]
                                  [--context fresh,full] [--rounds 3] [--steps 8] [--warmup 2] [--threads N]
                                  [--clock wall|cpu]

For each dtype the reference ``LMModel`` is built once with random weights (drawn directly on an empty module,
as ``benchmarks/vs_reference.py`` does) and our :class:`~dsmcli.engine.LM` is assigned the *same* tensors (no
copy: ~4 GB in float32, ~2 GB in bfloat16; the reference is cast in place between dtypes). For every batch size,
each round steps a fresh reference ``LMGen`` and a fresh :class:`~dsmcli.engine.LMStream` greedy on random
codes, one after the other (the order alternates between rounds); the table gives the medians of the per-step
wall times pooled over rounds (warm-up steps dropped), so load changes on a shared machine hit both alike, and
each one's best round median (its quietest moment: on a busy machine the closest to an idle one).

Context modes (ours): ``fresh`` = the first steps of a new stream, as ``vs_reference.py`` measures (our rings
attend over the cells written so far, the reference always over its whole ring); ``full`` = steady state after
``context`` steps (every ring cell holds a key: the state is set up as if the stream had run that long).
The reference's cost does not depend on how full its ring is, so it is timed once per batch size.

``int8`` in ``--dtypes``: ours from ``quantize_lm(lm, "int8")`` (the default native kernel) against the float32
reference, the comparison issue 6 asks for.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import torch

from dsmcli.bench.architectures import released_config
from dsmcli.engine import LM, LMConfig, LMStream, SamplingOptions, StreamState
from dsmcli.engine.quantize import quantize_lm

NON_LM_KEYS = ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name", "model_type",
               "lm_gen_config", "tts_config", "stt_config", "model_id")
NORM_GAIN = (0.6, 1.4)
MS = 1e3
THROUGHPUT_REF_BATCH = 8


@dataclass(frozen=True)
class Row:
    """Medians over all timed steps, and the best (lowest) round median: the quietest moment each one saw."""

    dtype: str
    batch: int
    context: str
    ref_ms: float
    ours_ms: float
    ref_best_ms: float
    ours_best_ms: float

    def line(self) -> str:
        ref_rate, ours_rate = (self.batch * MS / ms for ms in (self.ref_ms, self.ours_ms))  # stream-steps/s
        return (f"| {self.dtype} | {self.batch} | {self.context} | {self.ref_ms:.1f} | {self.ours_ms:.1f} | "
                f"{self.ref_ms / self.ours_ms:.2f}x | {self.ref_best_ms:.1f} | {self.ours_best_ms:.1f} | "
                f"{self.ref_best_ms / self.ours_best_ms:.2f}x | {ref_rate:.1f} | {ours_rate:.1f} |")


def throughput_lines(rows: list[Row], ref_batch: int = THROUGHPUT_REF_BATCH) -> list[str]:
    """Issue 6's throughput figure: ours at the largest batch vs the float32 reference at ``ref_batch``."""
    ref = [row for row in rows if row.dtype in ("float32", "int8") and row.batch == ref_batch]
    if not ref:
        return []
    ref_rate, ref_best = (ref_batch * MS / ms for ms in (ref[0].ref_ms, ref[0].ref_best_ms))
    largest = max(row.batch for row in rows)
    header = (f"\nthroughput vs the float32 reference at batch {ref_batch} ({ref_rate:.1f} stream-steps/s; best round "
              f"{ref_best:.1f}):")
    lines = [header]
    for row in rows:
        if row.batch == largest:
            rate, best = (row.batch * MS / ms for ms in (row.ours_ms, row.ours_best_ms))
            lines.append(f"  ours {row.dtype} batch {row.batch} {row.context}: {rate:.1f} stream-steps/s = "
                         f"{rate / ref_rate:.2f}x (best rounds: {best:.1f} = {best / ref_best:.2f}x)")
    return lines


def random_reference(lm_kwargs: dict, seed: int) -> torch.nn.Module:
    """The reference LMModel in float32, weights ~ N(0, 1/fan_in) (bf16-valued), norm gains in ``NORM_GAIN``."""
    from moshi.models import loaders

    # a deep copy: the reference writes into the nested conditioner dicts
    model = loaders.get_moshi_lm(None, lm_kwargs=copy.deepcopy(lm_kwargs), device="meta", dtype=torch.float32)
    model = model.to_empty(device="cpu").eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("alpha"):
            param.uniform_(*NORM_GAIN, generator=generator)
        else:
            param.normal_(0.0, param.shape[-1] ** -0.5, generator=generator)
        param.copy_(param.bfloat16().float())
    return model


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def timed(step: Callable[[int], object], warmup: int, steps: int) -> list[float]:
    times = []
    for index in range(warmup + steps):
        start = clock()
        step(index)
        times.append((clock() - start) * MS)
    return times[warmup:]


def ref_run(ref_lm: torch.nn.Module, codes: torch.Tensor, warmup: int, steps: int) -> list[float]:
    from moshi.models.lm import LMGen

    gen = LMGen(ref_lm, temp=0, temp_text=0)
    with torch.no_grad(), gen.streaming(codes.shape[1]):
        return timed(lambda i: gen.step(codes[i]), warmup, steps)


def fill_context(stream: LMStream, state: StreamState) -> None:
    """Make ``state`` look like a stream that already ran ``context`` steps (every ring cell holds a key)."""
    rings = state.backbone.rings
    capacity = rings.capacity
    rings.positions[:, :capacity] = torch.arange(capacity)
    rings.filled = capacity
    state.offsets.fill_(capacity)
    state.tokens.fill_(0)


def our_run(lm: LM, codes: torch.Tensor, warmup: int, steps: int, full: bool) -> list[float]:
    stream = LMStream(lm, SamplingOptions.greedy())
    state = stream.init_state(codes.shape[1])
    if full:
        fill_context(stream, state)
    return timed(lambda i: stream.step(codes[i], state), warmup, steps)


def compare(ref_lm: torch.nn.Module, ours: LM, label: str, batch: int, contexts: list[str], args) -> list[Row]:
    """Interleaved rounds of the reference and ours (each context mode) at ``batch``; medians in ms."""
    generator = torch.Generator().manual_seed(batch)
    codes = torch.randint(0, ours.config.card, (args.warmup + args.steps, batch, ours.config.n_q, 1),
                          generator=generator)
    runs: dict[str, Callable[[], list[float]]] = {"ref": partial(ref_run, ref_lm, codes, args.warmup, args.steps)}
    for context in contexts:
        runs[context] = partial(our_run, ours, codes, args.warmup, args.steps, context == "full")
    samples: dict[str, list[float]] = {name: [] for name in runs}
    best: dict[str, float] = {name: float("inf") for name in runs}
    for round_index in range(args.rounds):
        order = list(runs) if round_index % 2 == 0 else list(reversed(runs))
        for name in order:
            times = runs[name]()
            samples[name] += times
            best[name] = min(best[name], statistics.median(times))
            print(f"  {label} b{batch} round {round_index + 1} {name}: median {statistics.median(times):.1f} ms"
                  f" (load {os.getloadavg()[0]:.1f})", flush=True)
    ref_ms = statistics.median(samples["ref"])
    return [Row(label, batch, context, ref_ms, statistics.median(samples[context]), best["ref"], best[context])
            for context in contexts]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="stt-1b-en_fr", help="registry name of the architecture")
    parser.add_argument("--batches", default="1,8,16")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--context", default="fresh,full", help="fresh and/or full (see the module docstring)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or process CPU time (with --threads 1: the work done, not the waiting for "
                             "a core on a busy machine)")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    global clock
    args = parse_args(argv)
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    started = time.time()
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores, load {load}", flush=True)
    config = released_config(args.arch)
    lm_kwargs = {k: v for k, v in config.items() if k not in NON_LM_KEYS}
    ref_lm = random_reference(lm_kwargs, args.seed)
    contexts = [c for c in args.context.split(",") if c]
    rows: list[Row] = []
    for dtype_name in args.dtypes.split(","):
        dtype = torch.float32 if dtype_name == "int8" else getattr(torch, dtype_name)
        ref_lm = ref_lm.to(dtype)  # in place: float32 tensors are replaced, not kept
        ours = LM.from_state(LMConfig.from_dict(lm_kwargs), dict(ref_lm.state_dict()), dtype=dtype)
        if dtype_name == "int8":
            ours = quantize_lm(ours, "int8")  # consumes ours (drops the shared float tensors); the reference keeps them
        for batch in (int(b) for b in args.batches.split(",")):
            rows += compare(ref_lm, ours, dtype_name, batch, contexts, args)
        del ours
    del ref_lm
    print(f"\n{args.arch}, random weights, {args.threads} threads, {args.clock} clock; medians of {args.rounds} "
          f"interleaved rounds x {args.steps} steps; load average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} "
          f"at end; {time.time() - started:.0f} s")
    print("| dtype | batch | context (ours) | ref ms/step | ours ms/step | speed-up | ref best round | ours best round "
          "| speed-up (best) | ref stream-steps/s | ours stream-steps/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(row.line() for row in rows))
    print("\n".join(throughput_lines(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
