"""Wall time of a command on a quiet machine and under a synthetic CPU load, interleaved.

    python benchmarks/under_load.py [--load N] [--rounds R] [--max-seconds S] [--json FILE] \
        [--variant NAME=ENV,...] -- COMMAND [ARGS...]

Each round runs COMMAND once without load and once while N busy-loop processes (default: one per core)
spin; the busy loops are separate Python processes that end by themselves after ``--max-seconds`` (default
300) and are killed as soon as COMMAND returns, so the load is bounded in time. Quiet and loaded runs
alternate, so a change in the machine's background hits both alike. ``--variant`` adds environment
variants of the same command (``--variant t1=DSM_THREADS=1`` or ``--variant passive=OMP_WAIT_POLICY=PASSIVE``,
several ``VAR=VALUE`` joined by ``,``); each variant runs quiet and loaded in every round.

The report gives, per variant, the median (and min-max) wall seconds quiet and loaded and the ratio
loaded / quiet: the ratio is what "degrades gracefully under load" means here (a CPU-bound command sharing
every core with one busy loop each should take ~2x, not 10x). A measurement tool, never a unit test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


@dataclass
class Variant:
    name: str
    env: dict[str, str]
    quiet: list[float] = field(default_factory=list)
    loaded: list[float] = field(default_factory=list)
    failures: int = 0


def start_load(processes: int, max_seconds: float) -> list[subprocess.Popen]:
    """``processes`` busy loops (one Python process each) that stop by themselves after ``max_seconds``."""
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(max_seconds)]) for _ in range(processes)]


def stop_load(loops: list[subprocess.Popen]) -> None:
    for loop in loops:
        loop.kill()
    for loop in loops:
        loop.wait()


def timed_run(command: list[str], env: dict[str, str], load: int, max_seconds: float) -> tuple[float, int]:
    """Wall seconds and exit status of one run of ``command``, under ``load`` busy loops (0: quiet)."""
    loops = start_load(load, max_seconds) if load else []
    try:
        if loops:
            time.sleep(0.5)  # the loops are spinning before the command starts
        start = time.perf_counter()
        done = subprocess.run(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - start
    finally:
        stop_load(loops)
    if done.returncode:
        print(f"under_load: exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    return elapsed, done.returncode


def parse_variants(specs: list[str]) -> list[Variant]:
    variants = [Variant("default", {})]
    for spec in specs:
        name, _, assignments = spec.partition("=")
        env = dict(pair.split("=", 1) for pair in assignments.split(",") if pair)
        variants.append(Variant(name, env))
    return variants


def summary(times: list[float]) -> str:
    return f"{statistics.median(times):7.2f} s ({min(times):.2f}-{max(times):.2f})" if times else "      -"


def report(variants: list[Variant], load: int) -> None:
    print(f"{'variant':<12} {'quiet':<24} {f'loaded ({load} busy loops)':<24} loaded/quiet")
    for v in variants:
        ratio = statistics.median(v.loaded) / statistics.median(v.quiet) if v.quiet and v.loaded else float("nan")
        print(f"{v.name:<12} {summary(v.quiet):<24} {summary(v.loaded):<24} {ratio:5.1f}x"
              + (f"  ({v.failures} failed runs)" if v.failures else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, default=os.cpu_count() or 1, help="busy-loop processes (default: cores)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="a busy loop never outlives this")
    parser.add_argument("--variant", action="append", default=[], help="NAME=VAR=VALUE[,VAR=VALUE...]")
    parser.add_argument("--json", help="also write the measurements here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to time after --")
    variants = parse_variants(args.variant)
    for round_index in range(args.rounds):
        for v in variants:
            for load, times in ((0, v.quiet), (args.load, v.loaded)):
                elapsed, status = timed_run(command, v.env, load, args.max_seconds)
                if status:
                    v.failures += 1
                    continue
                times.append(elapsed)
                print(f"round {round_index + 1} {v.name} {'loaded' if load else 'quiet'}: {elapsed:.2f} s",
                      file=sys.stderr, flush=True)
    report(variants, args.load)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"command": command, "load": args.load, "load_average": os.getloadavg(),
                       "variants": [asdict(v) for v in variants]}, handle, indent=2)


if __name__ == "__main__":
    main()
