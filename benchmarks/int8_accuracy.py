"""Quantized accuracy (int8, int4): the quantized LM vs our fp32 path, teacher-forced, on speech codes.

    python benchmarks/vs_reference.py --workdir /tmp/stt1b ...      # writes the random stt-1b checkpoint once
    python benchmarks/int8_accuracy.py --checkpoint /tmp/stt1b [--methods int8 int4] [--group-sizes 64 128 256]
    python benchmarks/int8_accuracy.py --random stt-1b-en_fr --mimi DIR/mimi.safetensors [--methods int8 int4]
    python benchmarks/int8_accuracy.py --tts tests/.fixtures/<hash>/tiny-tts [--methods int8 int4]

STT (``--checkpoint`` or ``--random``): per method and group size, the quantized size, the text-logit cosine
similarity (min / mean over the steps) and greedy token agreement, with the fp32 tokens fed to both runs (so
both see the same inputs). ``--random`` draws the architecture's random weights from ``--seed`` for each run
(the fp32 run first, then each quantized model drawn and quantized weight by weight: never two models in
memory); the codes are bria.mp3 streamed through the Mimi at ``--mimi``.
TTS (``--tts``, a TTS checkpoint directory, e.g. the tiny fixture): a greedy (temperature 0) fp32 run with a
random voice condition, then the quantized model teacher-forced on its text and audio tokens; reports the
text-logit cosine, and the agreement of the greedy audio tokens (all codebooks, and codebook 0).
A measurement, not a test.
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

from dsmcli.bench.models import random_lm  # noqa: E402
from dsmcli.bench.architectures import released_config  # noqa: E402
from dsmcli.engine import LM, ConditionInputs, LMConfig, LMStream, SamplingOptions, StepHooks  # noqa: E402
from dsmcli.engine import TensorCondition  # noqa: E402
from dsmcli.engine.quantize import QuantMethod, quantize_lm  # noqa: E402
from dsmcli.hub.checkpoint import Checkpoint  # noqa: E402
from dsmcli.hub.files import ModelSource  # noqa: E402
from dsmcli.hub.loaders import load_lm


def _print(label: str, report, agree: dict[str, float]) -> None:
    print(f"{label}: {report.bytes_after / 2**30:.3f} GiB ({report.kernel_used} kernel), cosine min "
          f"{agree['cosine_min']:.5f} / mean {agree['cosine_mean']:.5f}, greedy agreement "
          f"{100 * agree['greedy_agreement']:.1f} % over {agree['steps']} steps (disagreements at fp32 top-2 margins "
          f"<= {agree['max_disagreeing_margin_std']:.2f} logit std)", flush=True)


def stt_checkpoint(args: argparse.Namespace) -> None:
    mimi = next(args.checkpoint.glob("mimi-*.safetensors"))
    codes = vr.speech_codes(mimi, vr.speech_frames(args.steps / 12.5 + 1))[..., : args.steps]
    fp32 = vr.text_logits_run(load_lm(args.checkpoint, dtype=torch.float32), codes, None)
    for method in args.methods:
        for group_size in args.group_sizes:
            lm = load_lm(args.checkpoint, dtype=torch.float32)
            lm = quantize_lm(lm, method, group_size=group_size)
            report = lm.quantization
            _print(f"{method} group {group_size}", report, vr.agreement(fp32, vr.text_logits_run(lm, codes, fp32[1])))
            del lm


def stt_random(args: argparse.Namespace) -> None:
    config = LMConfig.from_dict(Checkpoint.from_config(ModelSource(name=args.random), released_config(args.random))
                                .lm_kwargs)
    codes = vr.speech_codes(args.mimi, vr.speech_frames(args.steps / 12.5 + 1))[..., : args.steps]
    cpu = torch.device("cpu")
    fp32 = vr.text_logits_run(random_lm(config, cpu, torch.float32, args.seed), codes, None)
    for method in args.methods:
        lm = random_lm(config, cpu, torch.float32, args.seed, QuantMethod(method))
        _print(f"{args.random} {method}", lm.quantization, vr.agreement(fp32, vr.text_logits_run(lm, codes, fp32[1])))
        del lm


def _voice(lm: LM, seed: int) -> ConditionInputs:
    generator = torch.Generator().manual_seed(seed)
    values = {c.name: [c.possible_values[0]] for c in lm.config.conditioners if c.possible_values}
    tensors = {c.name: TensorCondition.full(torch.randn(1, 50, c.dim, generator=generator))
               for c in lm.config.conditioners if not c.possible_values}
    return ConditionInputs(values, tensors)


def tts_run(lm: LM, steps: int, seed: int, forced: tuple[torch.Tensor, torch.Tensor] | None):
    """Greedy TTS steps: (text logits ``[T, V]``, (greedy text ``[T, 1]``, greedy audio ``[T, 1, G]``)); ``forced``
    (text, audio) tokens are fed back instead of the greedy ones (teacher forcing)."""
    index, texts, audios = [0], [], []

    def on_text(text: torch.Tensor, _info) -> torch.Tensor:
        texts.append(text.clone())
        return text if forced is None else forced[0][index[0]].clone()

    def on_audio(audio: torch.Tensor, _info) -> torch.Tensor:
        audios.append(audio.clone())
        return audio if forced is None else forced[1][index[0]].clone()

    stream = LMStream(lm, SamplingOptions.greedy(), hooks=StepHooks(text_token=on_text, audio_tokens=on_audio))
    state = stream.init_state(1, _voice(lm, seed))
    logits = []
    for t in range(steps):
        index[0] = t
        logits.append(stream.step(None, state).text_logits[0].clone())
    return torch.stack(logits), (torch.stack(texts), torch.stack(audios))


def tts_fixture(args: argparse.Namespace) -> None:
    fp32_logits, fp32_tokens = tts_run(load_lm(args.tts, dtype=torch.float32), args.steps, args.seed, None)
    for method in args.methods:
        lm = load_lm(args.tts, dtype=torch.float32, quantize=method)
        logits, (_, audio) = tts_run(lm, args.steps, args.seed, fp32_tokens)
        cosine = torch.cosine_similarity(fp32_logits, logits, dim=-1)
        same = audio == fp32_tokens[1]
        print(f"{args.tts.name} {method}: text-logit cosine min {float(cosine.min()):.5f} / mean "
              f"{float(cosine.mean()):.5f}; greedy audio-token agreement {100 * float(same.float().mean()):.1f} % "
              f"(codebook 0: {100 * float(same[..., 0].float().mean()):.1f} %) over {args.steps} steps x "
              f"{audio.shape[-1]} codebooks", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a directory written by vs_reference.py")
    source.add_argument("--random", help="an architecture name: random weights drawn from --seed")
    source.add_argument("--tts", type=Path, help="a TTS checkpoint directory (audio-token agreement)")
    parser.add_argument("--mimi", type=Path, help="Mimi weights for --random (e.g. the real-size fixture)")
    parser.add_argument("--methods", nargs="+", default=["int8"], choices=["int8", "int4"])
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[128], help="--checkpoint only")
    parser.add_argument("--steps", type=int, default=60, help="steps (of bria.mp3 codes for STT)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.checkpoint is not None:
        stt_checkpoint(args)
    elif args.random is not None:
        if args.mimi is None:
            parser.error("--random needs --mimi")
        stt_random(args)
    else:
        tts_fixture(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
