"""Bounded memory of `dsm transcribe` on long inputs (issue 4: chunked reading).

A 30-minute input is 22,500 steps; the tiny model takes ~15-30 ms per step on the CI machine, too slow for
CI end to end. So the claim "30 min costs at most a small constant more than 1 min" is checked in two
honest halves, in a fresh process (tests/transcribe_memory_probe.py):

1. input side at full length: a 30-minute WAV (86 MB of int16) read frame by frame exactly as the
   transcriber reads it peaks at most ``INPUT_BOUND_MIB`` above its starting RSS, like the 1-minute file
   (reading it whole would cost >= 86 MB, as float32 172 MB);
2. the whole pipeline (Mimi + LM + word assembly + srt/jsonl/json writers) on 64 s of speech: after a
   warm-up, RSS grows by at most ``SLOPE_BOUND_BYTES`` per step. That includes the JSON writer, which
   by design keeps every segment until it writes the document. Extrapolated to 30 minutes it stays under
   ``SLOPE_BOUND_BYTES * 22,500 steps`` = 8.6 MB (measured: ~0.1-0.3 MB per 1,000 steps).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import SINGLE_THREAD_ENV, subprocess_env

SAMPLE_RATE = 24000
LONG_SECONDS = 30 * 60
SHORT_SECONDS = 60
PIPELINE_SECONDS = 64  # 800 steps
WARM_UP_STEPS = 200  # rings of the LM (context 40) and Mimi (16) are full long before
INPUT_BOUND_MIB = 4.0
SLOPE_BOUND_BYTES = 400
STEPS_30_MIN = LONG_SECONDS * 25 // 2
PROBE = Path(__file__).with_name("transcribe_memory_probe.py")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")


def write_tiled(path: Path, clip: np.ndarray, seconds: int) -> None:
    """``seconds`` of ``clip`` repeated, with a little noise so no two repeats are identical, as 16-bit WAV."""
    noise = np.random.default_rng(0).normal(0, 1e-3, len(clip)).astype(np.float32)
    total = seconds * SAMPLE_RATE
    with soundfile.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16") as file:
        written, repeat = 0, 0
        while written < total:
            part = (clip + np.roll(noise, 997 * repeat))[: total - written]
            file.write(part)
            written, repeat = written + len(part), repeat + 1


def test_memory_does_not_grow_with_input_length(tiny_stt, bria_24k, tmp_path):
    clip = bria_24k(30.0)
    paths = {name: tmp_path / f"{name}.wav" for name in ("short", "long", "speech")}
    for name, seconds in (("short", SHORT_SECONDS), ("long", LONG_SECONDS), ("speech", PIPELINE_SECONDS)):
        write_tiled(paths[name], clip, seconds)
    done = subprocess.run(
        [sys.executable, str(PROBE), tiny_stt, *(str(paths[n]) for n in ("short", "long", "speech")),
         f"{tmp_path / 'out'}/"],
        capture_output=True, env=subprocess_env(SINGLE_THREAD_ENV), timeout=600, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout)

    short, long = report["short"], report["long"]
    assert long["frames"] == short["frames"] + (LONG_SECONDS - SHORT_SECONDS) * 25 // 2
    assert short["growth_mib"] <= INPUT_BOUND_MIB and long["growth_mib"] <= INPUT_BOUND_MIB, report

    run = report["pipeline"]
    assert run["exit_code"] == 0 and run["steps"] >= PIPELINE_SECONDS * 25 // 2
    assert report["words"] > 50, "the pipeline must produce (and keep) a real transcript"
    steady = np.array([(s, m) for s, m in run["rss_by_step"] if s >= WARM_UP_STEPS])
    slope_mib = np.polyfit(steady[:, 0], steady[:, 1], 1)[0]  # MiB per step, least squares
    growth = steady[-1, 1] - steady[0, 1]
    span = steady[-1, 0] - steady[0, 0]
    assert slope_mib * 2**20 <= SLOPE_BOUND_BYTES, f"RSS grows {slope_mib * 2**20:.0f} B/step: {run['rss_by_step']}"
    assert growth * 2**20 / span <= SLOPE_BOUND_BYTES, f"RSS grew {growth:.2f} MiB in {span} steps"
    print(f"input growth 1 min {short['growth_mib']:.2f} MiB, 30 min {long['growth_mib']:.2f} MiB; "
          f"pipeline slope {slope_mib * 2**20:.0f} B/step -> 30 min <= {slope_mib * STEPS_30_MIN:.2f} MiB")
