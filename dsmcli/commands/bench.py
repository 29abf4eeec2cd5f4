"""`dsm bench`: flags → BenchOptions → dsmcli.bench.runner.run_bench → a Rich table or JSON. No timing logic here."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

import typer

from dsmcli.commands.common import INPUT, MODEL, OUTPUT, PERFORMANCE, dtype_option, examples
from dsmcli.commands.common import kernels_option, resolve_device, resolve_dtype

if TYPE_CHECKING:
    from dsmcli.bench.runner import BenchReport

MODEL_HELP = "Registry name, Hub repo id or local dir. Default: the registry's default STT model."
PATHS_HELP = "Comma-separated: stt, tts, codec (= codec-encode,codec-decode). Default: the model's task + codec."


BENCH_EPILOG = examples(
    "dsm bench --random-weights --model stt-1b-en_fr --batch 1,8     # no download",
    "dsm bench --random-weights --quantize int8 --threads 2 --json",
    "dsm bench --model tts-1.6b-en_fr --paths tts,codec",
)


def bench_cmd(
    paths: str | None = typer.Option(None, "--paths", metavar="PATHS", help=PATHS_HELP, rich_help_panel=INPUT),
    steps: int = typer.Option(20, "--steps", metavar="N", help="Timed steady-state steps per configuration.",
                              rich_help_panel=INPUT),
    warmup: int = typer.Option(3, "--warmup", metavar="N", help="Warm-up steps per configuration (reported apart).",
                               rich_help_panel=INPUT),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON (schema in benchmarks/README.md).",
                                  rich_help_panel=OUTPUT),
    model: str | None = typer.Option(None, "--model", "-m", metavar="NAME", help=MODEL_HELP, rich_help_panel=MODEL),
    random_weights: bool = typer.Option(
        False, "--random-weights", rich_help_panel=MODEL,
        help="Build the model's exact architecture with random weights (no download)."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the random weights and inputs.",
                             rich_help_panel=MODEL),
    batch: str = typer.Option("1", "--batch", "-b", metavar="N,N...", help="Batch sizes, comma-separated, e.g. 1,8,32.",
                              rich_help_panel=PERFORMANCE),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="Torch device: auto, cpu, cuda, cuda:1, mps.",
                               rich_help_panel=PERFORMANCE),
    dtype: str = dtype_option(),
    kernels: str = kernels_option(),
    quantize: str = typer.Option("none", "--quantize", metavar="METHOD", rich_help_panel=PERFORMANCE,
                                 help="none, int8 or int4 (LM linear weights, group-wise)."),
    threads: int | None = typer.Option(None, "--threads", metavar="N", rich_help_panel=PERFORMANCE,
                                       help="Torch CPU threads (default: torch's choice)."),
) -> None:
    """Time the stt / tts / codec paths on this device: ms per step, x real time, RTF, throughput, latency."""
    from dsmcli.bench.runner import BenchOptions, parse_batches, parse_paths, run_bench
    from dsmcli.engine.quantize import QuantMethod
    from dsmcli.errors import UsageError
    from dsmcli.hub.registry import default_model
    from dsmcli.kernels import KernelChoice

    try:
        method = QuantMethod(quantize)
    except ValueError:
        raise UsageError(f"--quantize {quantize!r}: choose none, int8 or int4") from None
    options = BenchOptions(
        model=model or default_model("stt"), batch_sizes=parse_batches(batch), paths=parse_paths(paths),
        steps=steps, warmup=warmup, device=resolve_device(device), dtype=resolve_dtype(dtype, device),
        random_weights=random_weights, quantize=method, threads=threads, seed=seed, kernels=KernelChoice(kernels))
    report = run_bench(options, progress=lambda what: print(f"dsm bench: {what}", file=sys.stderr, flush=True))
    if json_out:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print_table(report)


def _count(params: int) -> str:
    return f"{params / 1e9:.2f}B" if params >= 10**9 else f"{params / 1e6:.1f}M"


def _print_table(report: BenchReport) -> None:
    from rich.console import Console
    from rich.table import Table

    weights = "random weights" if report.random_weights else "released weights"
    quant = "" if report.quantize == "none" else f", {report.quantize} ({report.quantize_kernel})"
    title = (f"{report.model} ({weights}, {_count(report.params)} params) on {report.device}, {report.dtype}"
             f"{quant}, {report.threads} threads")
    table = Table(title=title, title_justify="left")
    columns = ("path", "batch", "ms/step", "p10–p90", "x real time", "RTF", "throughput ×RT", "stream-steps/s",
               "first output", "warm-up", "peak mem")
    for column in columns:
        table.add_column(column, justify="left" if column == "path" else "right", no_wrap=True)
    for r in report.results:
        s = r.ms_per_step
        first = f"{r.first_output_ms:.0f} ms ({r.first_output_steps} st)"
        warm = f"{r.warmup_ms:.0f} ms ({r.warmup_steps} st)" if r.warmup_steps else "-"
        table.add_row(r.path.value, str(r.batch), f"{s.median:.1f}", f"{s.p10:.1f}–{s.p90:.1f}",
                      f"{r.x_realtime:.2f}", f"{r.rtf:.3f}", f"{r.throughput_x_realtime:.2f}",
                      f"{r.stream_steps_per_s:.1f}", first, warm, f"{r.peak_memory_mb:.0f} MiB")
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    if report.load_average is not None and max(report.load_average) > (os.cpu_count() or 1):
        console.print(f"note: the machine was busy (load average {report.load_average[0]:.1f} -> "
                      f"{report.load_average[1]:.1f} on {os.cpu_count()} cores): timings are noisy.")
    for r in report.results:
        if r.voice_projection_ms is not None:
            console.print(f"{r.path.value} batch {r.batch}: voice projection {r.voice_projection_ms:.0f} ms, once per "
                          f"voice (made before the stream; a never-seen voice adds it to the first audio)")
    console.print("x real time = audio seconds per compute second; RTF = compute / audio (lower is faster); "
                  "first output = first word (stt) / first audio (tts) of a fresh stream; "
                  "peak mem = process peak RSS (CPU) or max allocated (GPU).")
