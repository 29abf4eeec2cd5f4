"""Corpus throughput: ``dsm transcribe`` over a folder in one process vs on Ray with N actors.

Each mode is a whole command as a user runs it (model load, Ray start-up, decoding, writing outputs included),
timed by the wall clock; the manifest gives the files and audio seconds done. Modes alternate round by round
so a busy machine penalises both alike. Prints one line per run and a summary (JSON with --json):
files per hour and x real time (audio seconds per wall second).

    python benchmarks/corpus_speed.py --model stt-1b-en_fr --inputs ../shared/data --copies 8 \\
        --batch-size 8 --threads 2 --ray-actors 2 --actor-threads 1 --rounds 2 --quantize int8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_corpus(inputs: Path, copies: int, folder: Path) -> int:
    """``copies`` copies of every audio file of ``inputs`` (distinct names) in ``folder``; returns the count."""
    from dsmcli.corpus.inputs import AUDIO_EXTENSIONS, InputSelection, expand_inputs

    sources = expand_inputs(InputSelection((str(inputs),)), AUDIO_EXTENSIONS)
    for copy in range(copies):
        for source in sources:
            shutil.copyfile(source, folder / f"{Path(source).stem}-{copy}{Path(source).suffix}")
    return copies * len(sources)


def run_mode(mode: str, args: argparse.Namespace, corpus: Path, work: Path, round_: int) -> dict:
    out, manifest = work / f"out-{mode}-{round_}", work / f"manifest-{mode}-{round_}.jsonl"
    command = [sys.executable, "-m", "dsmcli", "transcribe", str(corpus), "-m", args.model, "-f", "json",
               "-o", f"{out}/", "-b", str(args.batch_size), "--manifest", str(manifest), "--quantize", args.quantize]
    if mode == "ray":
        command += ["--ray", "--ray-actors", str(args.ray_actors), "--threads", str(args.actor_threads)]
    else:
        command += ["--threads", str(args.threads)]
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    audio = sum(row["audio_seconds"] or 0 for row in rows if row["status"] == "ok")
    files = sum(row["status"] == "ok" for row in rows)
    return {"mode": mode, "round": round_, "files": files, "audio_seconds": round(audio, 1), "wall_seconds":
            round(wall, 1), "files_per_hour": round(files / wall * 3600), "x_realtime": round(audio / wall, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stt-1b-en_fr")
    parser.add_argument("--inputs", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--copies", type=int, default=4, help="copies of each input file")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, one process")
    parser.add_argument("--ray-actors", type=int, default=2)
    parser.add_argument("--actor-threads", type=int, default=1, help="torch threads per Ray actor")
    parser.add_argument("--quantize", default="none")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", default="process,ray")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dsm-corpus-speed-") as tmp:
        work = Path(tmp)
        corpus = work / "corpus"
        corpus.mkdir()
        count = build_corpus(args.inputs, args.copies, corpus)
        runs = []
        for round_ in range(args.rounds):
            for mode in args.modes.split(","):
                runs.append(run_mode(mode, args, corpus, work, round_))
                if not args.json:
                    print(json.dumps(runs[-1]), flush=True)
    summary = {mode: {key: statistics.median(r[key] for r in runs if r["mode"] == mode)
                      for key in ("wall_seconds", "files_per_hour", "x_realtime")}
               for mode in args.modes.split(",")}
    report = {"files": count, "args": vars(args) | {"inputs": str(args.inputs)}, "runs": runs, "median": summary}
    print(json.dumps(report, indent=None if not args.json else 2, default=str))


if __name__ == "__main__":
    main()
