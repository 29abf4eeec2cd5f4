"""Memory probe of `dsm transcribe`, run by tests/test_transcribe_memory.py in its own process (clean RSS).

    python transcribe_memory_probe.py MODEL SHORT.wav LONG.wav PIPELINE.wav OUT_DIR

1. Input side, at full length: SHORT and LONG are read through ``open_audio`` + ``FrameFeed`` exactly as a
   transcription reads them (prefix, audio, suffix frames); reported: the peak RSS of each pass above the
   RSS before it (Linux ``VmHWM`` reset through ``/proc/self/clear_refs``, else sampled every frame block).
2. The whole pipeline: ``execute()`` of the CLI (model, srt + jsonl + json writers, progress observer) on
   PIPELINE.wav; RSS sampled every ``SAMPLE_EVERY`` steps.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from dsmcli.audio import open_audio
from dsmcli.commands import transcribe_run as run
from dsmcli.outputs import WriterOptions
from dsmcli.outputs.segments import SegmentOptions
from dsmcli.stt.transcriber import FrameFeed, TranscribeOptions

SAMPLE_EVERY = 50  # steps between two RSS samples
FRAMES_PER_SAMPLE = 100  # frames between two RSS samples of the input pass
MIB = 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / MIB


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def peak_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def input_pass(path: str, timing) -> dict[str, float]:
    """Read ``path`` frame by frame as ``Transcriber`` does; the peak RSS above the starting level."""
    before = rss_mib()
    exact = reset_peak()
    sampled = before
    feed = FrameFeed(open_audio(path), timing.prefix_frames, timing.suffix_frames)
    frames = 0
    while feed.next_frame() is not None:
        frames += 1
        if frames % FRAMES_PER_SAMPLE == 0:
            sampled = max(sampled, rss_mib())
    peak = peak_mib() if exact else sampled
    return {"frames": frames, "growth_mib": peak - before, "exact_peak": exact}


def pipeline(model: str, path: str, out_dir: str) -> dict[str, object]:
    samples: list[tuple[int, float]] = []
    steps = [0]

    def observe(source: str, samples_read: int) -> None:
        steps[0] += 1
        if steps[0] % SAMPLE_EVERY == 0:
            samples.append((steps[0], rss_mib()))

    request = run.Request(
        sources=[path], formats=["srt", "jsonl", "json"], output=out_dir, force=True, model=model,
        device=torch.device("cpu"), dtype=torch.float32, batch_size=1, raw=False, rate=None, channels=None,
        audio_device=None, options=TranscribeOptions(), writer_options=WriterOptions(),
        segment_options=SegmentOptions(), progress=False)
    result = run.execute(request, observer=observe)
    return {"exit_code": result.exit_code, "steps": steps[0], "rss_by_step": samples}


def main(model: str, short: str, long: str, pipeline_input: str, out_dir: str) -> None:
    from dsmcli.stt import SttModel

    timing = SttModel.load(model).timing  # also warms the model load path for the pipeline pass
    report = {"short": input_pass(short, timing), "long": input_pass(long, timing)}
    report["pipeline"] = pipeline(model, pipeline_input, out_dir)
    report["words"] = sum(1 for line in (Path(out_dir) / f"{Path(pipeline_input).stem}.jsonl").open()
                          if line.startswith('{"type": "Word"'))
    print(json.dumps(report))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:6])
