"""int8 accuracy per group size: text logits of the quantized LM vs our fp32 path, teacher-forced on speech codes.

    python benchmarks/vs_reference.py --workdir /tmp/stt1b ...      # writes the random stt-1b checkpoint once
    python benchmarks/int8_accuracy.py --checkpoint /tmp/stt1b [--group-sizes 64 128 256] [--steps 60]

Prints, per group size: int8 size, text-logit cosine similarity (min / mean over the steps) and greedy token
agreement, with the fp32 tokens fed to both runs (so both see the same inputs). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tools"))

import vs_reference as vr  # noqa: E402

from dsmcli.engine import LM  # noqa: E402
from dsmcli.engine.quantize import quantize_lm  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a directory written by vs_reference.py")
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=60, help="steps of bria.mp3 codes")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    mimi = next(args.checkpoint.glob("mimi-*.safetensors"))
    codes = vr.speech_codes(mimi, vr.speech_frames(args.steps / 12.5 + 1))[..., : args.steps]
    fp32 = vr.text_logits_run(LM.load(args.checkpoint, dtype=torch.float32), codes, None)
    for group_size in args.group_sizes:
        lm = LM.load(args.checkpoint, dtype=torch.float32)
        report = quantize_lm(lm, "int8", group_size=group_size)
        agree = vr.agreement(fp32, vr.text_logits_run(lm, codes, fp32[1]))
        print(f"group {group_size}: {report.bytes_after / 2**30:.3f} GiB ({report.kernel_used} kernel), cosine min "
              f"{agree['cosine_min']:.5f} / mean {agree['cosine_mean']:.5f}, greedy agreement "
              f"{100 * agree['greedy_agreement']:.1f} % over {agree['steps']} steps", flush=True)
        del lm
    return 0


if __name__ == "__main__":
    sys.exit(main())
