"""Same-process A/B of the depformer's execution modes on ``dsm bench``'s TTS path (issue 15).

    flock /tmp/bigmodel.lock python benchmarks/tts_frame_ab.py [--model tts-1.6b-en_fr] [--quantize int4]
        [--steps 8] [--threads 2] [--modes loop pool serial helper]

Loads the model with random weights, steps a fresh :class:`dsmcli.bench_paths.TtsRunner` stream past its first
audio, then times steady-state steps with the modes interleaved step by step (so a busy machine slows them
alike): ``loop`` one native call per sub-step and torch sampling (``Depformer.native_frame = False``); ``pool``,
``serial``, ``helper``: the whole frame in one native call with that thread mode
(:mod:`dsmcli.engine.depformer_native`). Prints the median and minimum wall and CPU (process) time per step.
Every mode samples the same tokens (tested), so the stream itself does not depend on the order. A measurement,
never a unit test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("NO_TORCH_COMPILE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `dsm` starts (see benchmarks/README.md, threads)

import torch  # noqa: E402

try:  # the bench modules' home since they moved into the dsmcli.bench package
    from dsmcli.bench.models import load_bench_model  # noqa: E402
    from dsmcli.bench.paths import TtsRunner  # noqa: E402
except ImportError:  # before the move
    from dsmcli.bench_models import load_bench_model  # type: ignore[no-redef]  # noqa: E402
    from dsmcli.bench_paths import TtsRunner  # type: ignore[no-redef]  # noqa: E402
from dsmcli.engine.depformer_native import HELPER, POOL, SERIAL  # noqa: E402
from dsmcli.engine.quantize import QuantMethod  # noqa: E402

MODES = {"loop": (False, POOL), "pool": (True, POOL), "serial": (True, SERIAL), "helper": (True, HELPER)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tts-1.6b-en_fr")
    parser.add_argument("--quantize", default="int4", choices=[m.value for m in QuantMethod])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_bench_model(args.model, torch.device("cpu"), torch.float32, random_weights=True,
                             quantize=QuantMethod(args.quantize))
    depformer = model.lm.depformer
    native = None if depformer is None else depformer.native(torch.float32, "cpu")
    if depformer is None or native is None:
        raise SystemExit("this model has no native depformer here")
    runner = TtsRunner(model, 1, seed=0)
    runner.start()
    for _ in range(runner.first_output_steps + 2):
        runner.step()
    times: dict[str, tuple[list[float], list[float]]] = {mode: ([], []) for mode in args.modes}
    for _ in range(args.steps):
        for mode in args.modes:
            depformer.native_frame, native.frame_threads = MODES[mode]
            wall, cpu = time.perf_counter(), time.process_time()
            runner.step()
            times[mode][0].append((time.perf_counter() - wall) * 1e3)
            times[mode][1].append((time.process_time() - cpu) * 1e3)
    print(f"{args.model} {args.quantize} batch 1, {args.threads} threads, load {os.getloadavg()[0]:.1f}")
    for mode, (wall_ms, cpu_ms) in times.items():
        print(f"  {mode:7s} wall median {statistics.median(wall_ms):7.1f} min {min(wall_ms):7.1f}   "
              f"cpu median {statistics.median(cpu_ms):7.1f} min {min(cpu_ms):7.1f} ms per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
