"""dsmcli vs the reference (``moshi``) on the same random weights, the same inputs, the same machine, one run.

    python benchmarks/vs_reference.py [--arch stt-1b-en_fr] [--threads 2] [--rounds 3] [--steps 16]
                                      [--quantize int8 ...] [--mimi FILE] [--workdir DIR] [--json results.json]

1. Mimi: a real-size random Mimi (``tools/make_fixtures.py``'s ``make_real_mimi``, or ``--mimi FILE``) is loaded
   by both; streaming encode of real speech (bria.mp3) frame by frame, one-shot encode, and the streaming decode
   of its codes frame by frame (what ``dsm speak`` runs per step).
2. LM: the reference ``LMModel`` of the architecture is built with random weights (bf16-valued, so the released
   bf16 file is lossless), saved in the released layout (``save_lm``) next to a ``config.json``, and ours is
   loaded from that directory through ``dsmcli.hub.loaders.load_lm``: bit-identical weights. Both step greedy on the Mimi codes of
   bria.mp3, interleaved round by round (the machine is shared: medians over rounds; see benchmarks/README.md).
3. Ours is then quantized (``lm = quantize_lm(lm, "int8")``) and timed again against fresh reference
   rounds; int8 agreement (text-logit cosine similarity, greedy token agreement) is measured teacher-forced
   against our fp32 run on the same codes.

A TTS architecture (``--arch tts-1.6b-en_fr``) is timed on the TTS step instead: no input codes, the conditions of
one random 10 s voice (and the first value of each lookup-table condition) for both, the depformer sampling every
generated codebook (temperature 0.6, top-k 250 / 25 for text, no CFG batch doubling); the reference steps
``LMGen`` as its ``TTSModel.generate`` does. Each ``--quantize`` mode then reloads ours from the checkpoint,
quantizes it and times it against fresh reference rounds (no agreement figures for TTS: sampling).

``--arch`` is a registry name or a directory holding a ``config.json`` (e.g. a test fixture repo, for a quick run).
Needs ~10 GB of RAM at the peak for stt-1b (the reference fp32 model and ours, 4 GB each), ~15 GB for tts-1.6b,
and ~2-4 GB of disk: run it under ``flock /tmp/bigmodel.lock`` on a shared machine.
Never run as a unit test: it is a measurement.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from fixturelib.audio import SHARED_DATA, speech_24k

from dsmcli.bench.architectures import released_config
from dsmcli.constants import FRAME_SIZE
from dsmcli.engine import LM, ConditionInputs, LMStream, SamplingOptions, StepHooks, TensorCondition
from dsmcli.engine.quantize import quantize_lm
from dsmcli.hub.loaders import load_lm, load_mimi

NON_LM_KEYS = ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name", "model_type",
               "lm_gen_config", "tts_config", "stt_config", "model_id")
SPEECH = "bria.mp3"
NORM_GAIN = (0.6, 1.4)
TARGETS = {"mimi_encode": 4.0, "lm_fp32": 1.0, "lm_int8": 3.0, "throughput": 3.0, "cosine": 0.999, "tts_fp32": 2.0}
TTS_TEMP, TTS_TOP_K, TTS_TEXT_TOP_K = 0.6, 250, 25  # the dsm speak / reference TTSModel defaults
VOICE_FRAMES = 125  # one 10 s voice embedding at 12.5 Hz
MAX_SPEAKERS = 5  # the reference TTSModel's default


@dataclass(frozen=True)
class Timing:
    """Per-step wall times (ms) pooled over rounds; first step of each round kept apart; ``cpu_median_ms``: the
    process CPU time per step (all threads), less sensitive than wall time to other jobs on the machine."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    first_ms: float
    steps: int
    cpu_median_ms: float

    @classmethod
    def of(cls, samples: list[tuple[float, float]], firsts: list[float]) -> Timing:
        ordered = sorted(wall for wall, _cpu in samples)
        low, high = (ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.1, 0.9))
        return cls(statistics.median(ordered), low, high, statistics.median(firsts), len(ordered),
                   statistics.median(cpu for _wall, cpu in samples))


def timed_run(step: Callable[[int], object], warmup: int, steps: int) -> tuple[list[tuple[float, float]], float]:
    """Run ``warmup + steps`` steps; (wall ms, CPU ms) of each of the last ``steps``, and wall ms of the first."""
    times = []
    for index in range(warmup + steps):
        start, cpu = time.perf_counter(), time.process_time()
        step(index)
        times.append(((time.perf_counter() - start) * 1e3, (time.process_time() - cpu) * 1e3))
    return times[warmup:], times[0][0]


Run = Callable[[], tuple[list[tuple[float, float]], float]]


def interleaved(contenders: dict[str, Run], rounds: int) -> dict[str, Timing]:
    """Each round runs every contender once, in turn, so load changes hit all of them alike."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    firsts: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(rounds):
        for name, run in contenders.items():
            times, first = run()
            samples[name] += times
            firsts[name].append(first)
            wall, cpu = (statistics.median(t[i] for t in times) for i in (0, 1))
            print(f"  round {round_index + 1}/{rounds} {name}: median {wall:.1f} ms (CPU {cpu:.1f} ms)", flush=True)
    return {name: Timing.of(samples[name], firsts[name]) for name in contenders}


# ------------------------------------------------------------------------------------------- Mimi


def speech_frames(seconds: float) -> torch.Tensor:
    """``[F, 1, 1, FRAME_SIZE]`` frames of real speech."""
    wav = torch.from_numpy(speech_24k(SHARED_DATA / SPEECH, seconds))
    return wav[: len(wav) // FRAME_SIZE * FRAME_SIZE].view(-1, 1, 1, FRAME_SIZE)


def bench_mimi(path: Path, frames: torch.Tensor, codes: torch.Tensor, rounds: int) -> dict[str, Timing]:
    from make_fixtures import load_ref_mimi

    ref, ours = load_ref_mimi(path, None, 32), load_mimi(path)

    def ref_stream() -> tuple[list[tuple[float, float]], float]:
        with torch.no_grad(), ref.streaming(1):
            return timed_run(lambda i: ref.encode(frames[i]), 0, len(frames))

    def our_stream() -> tuple[list[tuple[float, float]], float]:
        state = ours.init_state(1)
        return timed_run(lambda i: ours.encode_step(frames[i], state), 0, len(frames))

    whole = frames.reshape(1, 1, -1)

    def one_shot(model: torch.nn.Module) -> Run:
        def run() -> tuple[list[tuple[float, float]], float]:
            with torch.no_grad():
                times, first = timed_run(lambda i: model.encode(whole), 1, 1)
            return [(wall / len(frames), cpu / len(frames)) for wall, cpu in times], first / len(frames)

        return run

    print("Mimi streaming encode (ms per 80 ms frame, batch 1)")
    result = interleaved({"ref_stream": ref_stream, "ours_stream": our_stream}, rounds)
    print("Mimi one-shot encode (ms per frame)")
    result.update(interleaved({"ref_oneshot": one_shot(ref), "ours_oneshot": one_shot(ours)}, rounds))

    def ref_decode() -> tuple[list[tuple[float, float]], float]:
        with torch.no_grad(), ref.streaming(1):
            return timed_run(lambda i: ref.decode(codes[..., i : i + 1]), 0, codes.shape[-1])

    def our_decode() -> tuple[list[tuple[float, float]], float]:
        state = ours.init_state(1)
        return timed_run(lambda i: ours.decode_step(codes[..., i : i + 1], state), 0, codes.shape[-1])

    print("Mimi streaming decode (ms per 80 ms frame, batch 1)")
    result.update(interleaved({"ref_decode": ref_decode, "ours_decode": our_decode}, rounds))
    return result


def speech_codes(path: Path, frames: torch.Tensor) -> torch.Tensor:
    """Codes ``[1, n_q, F]`` of the frames, streamed through our Mimi (what ``dsm transcribe`` feeds the LM)."""
    mimi = load_mimi(path)
    state = mimi.init_state(1)
    return torch.cat([mimi.encode_step(frame, state) for frame in frames], dim=-1)


# --------------------------------------------------------------------------------------------- LM


def random_reference_lm(lm_kwargs: dict, seed: int) -> torch.nn.Module:
    """The reference LMModel, fp32, weights ~ N(0, 1/fan_in) rounded to bf16 values, norm gains in [0.6, 1.4].
    (Drawn directly on an empty module: the reference's own initialisers take minutes at this size.)"""
    from moshi.models import loaders

    model = loaders.get_moshi_lm(None, lm_kwargs=copy.deepcopy(lm_kwargs), device="meta", dtype=torch.float32)
    model = model.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("alpha"):
                param.uniform_(*NORM_GAIN, generator=generator)
            else:
                param.normal_(0.0, param.shape[-1] ** -0.5, generator=generator)
            param.copy_(param.bfloat16().float())
    return model


def write_checkpoint(ref_lm: torch.nn.Module, config: dict, mimi_path: Path, workdir: Path) -> Path:
    """``workdir`` laid out like a released repo: config.json, the LM in the released layout, the Mimi file."""
    from make_fixtures import save_lm

    workdir.mkdir(parents=True, exist_ok=True)
    save_lm(ref_lm, workdir / config["moshi_name"])
    mimi_link = workdir / config["mimi_name"]
    if not mimi_link.exists():
        mimi_link.symlink_to(mimi_path.resolve())
    (workdir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return workdir


def batch_codes(codes: torch.Tensor, batch: int, steps: int) -> torch.Tensor:
    """``[steps, batch, n_q, 1]``: slot ``b`` reads the speech from frame ``b`` on (wrapping)."""
    total = codes.shape[-1]
    index = (torch.arange(steps)[:, None] + torch.arange(batch)[None, :]) % total
    return codes[0].T[index][..., None]  # [steps, batch, n_q, 1]


def ref_contender(ref_lm, codes: torch.Tensor, batch: int, warmup: int, steps: int):
    from moshi.models import LMGen

    inputs = batch_codes(codes, batch, warmup + steps)

    def run() -> tuple[list[tuple[float, float]], float]:
        gen = LMGen(ref_lm, temp=0, temp_text=0)
        with torch.no_grad(), gen.streaming(batch):
            return timed_run(lambda i: gen.step(inputs[i]), warmup, steps)

    return run


def our_contender(lm: LM, codes: torch.Tensor, batch: int, warmup: int, steps: int):
    inputs = batch_codes(codes, batch, warmup + steps)

    def run() -> tuple[list[tuple[float, float]], float]:
        stream = LMStream(lm, SamplingOptions.greedy())
        state = stream.init_state(batch)
        return timed_run(lambda i: stream.step(inputs[i], state), warmup, steps)

    return run


def text_logits_run(lm: LM, codes: torch.Tensor, forced: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy batch-1 run over all codes: (text logits ``[T, V]``, tokens ``[T]``); ``forced`` ``[T]`` tokens
    are fed back instead of the sampled ones (teacher forcing)."""
    step_index = [0]

    def force(token: torch.Tensor, _info) -> torch.Tensor:
        return token if forced is None else forced[step_index[0]].view(1)

    stream = LMStream(lm, SamplingOptions.greedy(), hooks=StepHooks(text_token=force))
    state = stream.init_state(1)
    logits, tokens = [], []
    for t in range(codes.shape[-1]):
        step_index[0] = t
        out = stream.step(codes[:, :, t : t + 1], state)
        logits.append(out.text_logits[0].clone())
        tokens.append(int(out.text_logits[0].argmax()))
    return torch.stack(logits), torch.tensor(tokens)


def agreement(fp32: tuple[torch.Tensor, torch.Tensor], int8: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """Cosine of the text logits per step, greedy agreement, and how close to a tie the disagreements were:
    fp32 top-2 margins in units of the step's logit standard deviation."""
    cos = torch.cosine_similarity(fp32[0], int8[0], dim=-1)
    top = fp32[0].topk(2, dim=-1).values
    margin = (top[:, 0] - top[:, 1]) / fp32[0].std(dim=-1)
    differ = fp32[1] != int8[1]
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "greedy_agreement": float((~differ).float().mean()), "steps": len(cos),
            "median_margin_std": float(margin.median()),
            "max_disagreeing_margin_std": float(margin[differ].max()) if bool(differ.any()) else 0.0}


# -------------------------------------------------------------------------------------------- TTS


def tts_conditions(config: dict, batch: int, seed: int):
    """The same conditions for both sides: (ours, the reference's ``ConditionAttributes`` list). Lookup tables
    take their first value; tensor conditions one random 10 s voice in the first of ``max_speakers`` slots."""
    from moshi.conditioners import ConditionAttributes
    from moshi.conditioners import TensorCondition as RefTensorCondition

    speakers = int(config.get("tts_config", {}).get("max_speakers", MAX_SPEAKERS))
    generator = torch.Generator().manual_seed(seed)
    values, tensors, ref_text, ref_tensors = {}, {}, {}, {}
    for name, spec in config.get("conditioners", {}).items():
        if spec["type"] == "lut":
            value = spec["lut"]["possible_values"][0]
            values[name], ref_text[name] = [value] * batch, value
            continue
        voice = torch.randn(1, speakers * VOICE_FRAMES, spec["tensor"]["dim"], generator=generator)
        mask = torch.zeros(1, speakers * VOICE_FRAMES, dtype=torch.bool)
        mask[:, :VOICE_FRAMES] = True
        tensors[name] = TensorCondition(voice.expand(batch, -1, -1).contiguous(), mask.expand(batch, -1).contiguous())
        ref_tensors[name] = RefTensorCondition(voice, mask)
    ours = ConditionInputs(values, tensors)
    return ours, [ConditionAttributes(text=dict(ref_text), tensor=dict(ref_tensors)) for _ in range(batch)]


def ref_tts_contender(ref_lm, config: dict, batch: int, warmup: int, steps: int, seed: int):
    """The reference TTS step as ``TTSModel.generate`` runs it (``LMGen`` with the conditions, no input codes)."""
    from moshi.models import LMGen

    _ours, attributes = tts_conditions(config, batch, seed)

    def run() -> tuple[list[tuple[float, float]], float]:
        torch.manual_seed(seed)
        with torch.no_grad():
            condition_tensors = ref_lm.condition_provider.prepare_and_provide(attributes)
            gen = LMGen(ref_lm, temp=TTS_TEMP, temp_text=TTS_TEMP, top_k=TTS_TOP_K, top_k_text=TTS_TEXT_TOP_K,
                        condition_tensors=condition_tensors, cfg_is_no_text=True)
            empty = torch.zeros(batch, ref_lm.n_q - ref_lm.dep_q, 1, dtype=torch.long)
            with gen.streaming(batch):
                return timed_run(lambda i: gen.step(empty), warmup, steps)

    return run


def our_tts_contender(lm: LM, config: dict, batch: int, warmup: int, steps: int, seed: int):
    condition, _attributes = tts_conditions(config, batch, seed)
    options = SamplingOptions(temp=TTS_TEMP, top_k=TTS_TOP_K, text_temp=TTS_TEMP, text_top_k=TTS_TEXT_TOP_K)

    def run() -> tuple[list[tuple[float, float]], float]:
        stream = LMStream(lm, options, cfg_no_text=True, num_generated=lm.config.dep_q,
                          generator=torch.Generator().manual_seed(seed))
        state = stream.init_state(batch, condition)
        return timed_run(lambda i: stream.step(None, state), warmup, steps)

    return run


def tts_phases(ref_lm, checkpoint: Path, config: dict, args) -> dict[str, Timing]:
    """Batch 1: ours fp32 vs the reference fp32, then each ``--quantize`` mode of ours (reloaded, quantized) vs
    fresh reference rounds."""
    w, n, seed = args.warmup, args.steps, args.seed
    timings: dict[str, Timing] = {}
    for mode in ("fp32", *args.quantize):
        ours = load_lm(checkpoint, dtype=torch.float32)
        if mode != "fp32":
            ours = quantize_lm(ours, mode)
            report = ours.quantization
            print(f"quantized {report.tensors} weights: {report.bytes_before / 2**30:.2f} -> "
                  f"{report.bytes_after / 2**30:.2f} GiB (groups of {report.group_size}, {report.kernel_used} kernel)")
        print(f"TTS step, batch 1 (ours {mode})")
        result = interleaved({"ref_tts_b1": ref_tts_contender(ref_lm, config, 1, w, n, seed),
                              f"ours_tts_{mode}_b1": our_tts_contender(ours, config, 1, w, n, seed)}, args.rounds)
        timings[f"ref_tts_b1@{mode}"] = result["ref_tts_b1"]
        timings[f"ours_tts_{mode}_b1"] = result[f"ours_tts_{mode}_b1"]
        del ours
    return timings


def tts_summary(t: dict[str, Timing], args) -> list[str]:
    lines = ["| figure | reference | ours | ratio | target |", "|---|---|---|---|---|", *mimi_rows(t),
             row("TTS step batch 1 fp32, ms", t["ref_tts_b1@fp32"], t["ours_tts_fp32_b1"], TARGETS["tts_fp32"])]
    for mode in args.quantize:
        lines.append(row(f"TTS step batch 1, ours --quantize {mode} vs ref fp32, ms", t[f"ref_tts_b1@{mode}"],
                         t[f"ours_tts_{mode}_b1"], None))
    return lines


# ------------------------------------------------------------------------------------------- main


def lm_phase(label: str, ref_lm, ours: LM, codes: torch.Tensor, args) -> dict[str, Timing]:
    """Batch 1 ours vs reference, then ours at ``--our-batch`` vs the reference at ``--ref-batch``."""
    w, n = args.warmup, args.steps
    print(f"LM step, batch 1 ({label})")
    result = interleaved({"ref_b1": ref_contender(ref_lm, codes, 1, w, n),
                          f"ours_{label}_b1": our_contender(ours, codes, 1, w, n)}, args.rounds)
    print(f"LM throughput (ours batch {args.our_batch} {label}, reference batch {args.ref_batch})")
    result.update(interleaved({f"ref_b{args.ref_batch}": ref_contender(ref_lm, codes, args.ref_batch, w, n),
                               f"ours_{label}_b{args.our_batch}": our_contender(ours, codes, args.our_batch, w, n)},
                              args.rounds))
    return result


def _ratio_rows(t: dict[str, Timing], args) -> list[str]:
    rb, ob, mode = args.ref_batch, args.our_batch, args.quantize[0]  # the quantized runs are stored as "int8"
    tput = lambda name, batch: 1e3 * batch / t[name].median_ms  # stream-steps per second
    rows = []
    rows += mimi_rows(t)
    rows += [row("LM step batch 1 fp32, ms", t["ref_b1"], t["ours_fp32_b1"], TARGETS["lm_fp32"]),
             row(f"LM step batch 1, ours --quantize {mode} vs ref fp32, ms", t["ref_b1@int8"], t["ours_int8_b1"],
                 TARGETS["lm_int8"])]
    for label, ref, target in (("fp32", f"ref_b{rb}", None), ("int8", f"ref_b{rb}@int8", TARGETS["throughput"])):
        ours, theirs = tput(f"ours_{label}_b{ob}", ob), tput(ref, rb)
        goal = "" if target is None else f">= {target:g}x {'ok' if ours / theirs >= target else 'BELOW TARGET'}"
        shown = mode if label == "int8" else label
        rows.append(f"| LM stream-steps/s, ours b{ob} {shown} vs ref b{rb} | {theirs:.1f} /s | {ours:.1f} /s | "
                    f"{ours / theirs:.2f}x | {goal} |")
    return rows


def mimi_rows(t: dict[str, Timing]) -> list[str]:
    if "ref_stream" not in t:
        return []
    return [row("Mimi streaming encode, ms/frame", t["ref_stream"], t["ours_stream"], TARGETS["mimi_encode"]),
            row("Mimi one-shot encode, ms/frame", t["ref_oneshot"], t["ours_oneshot"], None),
            row("Mimi streaming decode, ms/frame", t["ref_decode"], t["ours_decode"], None)]


def row(figure: str, ref: Timing, ours: Timing, target: float | None) -> str:
    """Wall-time ratio (the figure) and, in brackets, the CPU-time ratio."""
    ratio, cpu_ratio = ref.median_ms / ours.median_ms, ref.cpu_median_ms / ours.cpu_median_ms
    goal = "" if target is None else f">= {target:g}x {'ok' if ratio >= target else 'BELOW TARGET'}"
    return (f"| {figure} | {ref.median_ms:.1f} (CPU {ref.cpu_median_ms:.1f}) | {ours.median_ms:.1f} "
            f"(CPU {ours.cpu_median_ms:.1f}) | {ratio:.2f}x (CPU {cpu_ratio:.2f}x) | {goal} |")


def summary(t: dict[str, Timing], agree: dict[str, float], args) -> list[str]:
    lines = ["| figure | reference | ours | ratio | target |", "|---|---|---|---|---|", *_ratio_rows(t, args),
             (f"| {args.quantize[0]} text-logit cosine vs our fp32 (min / mean over {agree['steps']} steps) | | "
              f"{agree['cosine_min']:.5f} / {agree['cosine_mean']:.5f} | | >= {TARGETS['cosine']} "
              f"{'ok' if agree['cosine_min'] >= TARGETS['cosine'] else 'BELOW TARGET'} |"),
             (f"| {args.quantize[0]} greedy text-token agreement vs our fp32 | | "
              f"{100 * agree['greedy_agreement']:.1f} % "
              f"(disagreements at fp32 top-2 margins <= {agree['max_disagreeing_margin_std']:.3f} logit std; "
              f"median margin {agree['median_margin_std']:.3f}) | | |")]
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="stt-1b-en_fr",
                        help="registry name of an STT or TTS architecture, or a directory with a config.json")
    parser.add_argument("--quantize", nargs="*", default=["int8"],
                        help="our quantized modes to time (STT: the first one, with its agreement figures; TTS: "
                             "none given, fp32 only)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per comparison")
    parser.add_argument("--steps", type=int, default=16, help="timed steps per round (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each round")
    parser.add_argument("--ref-batch", type=int, default=8)
    parser.add_argument("--our-batch", type=int, default=16)
    parser.add_argument("--speech-seconds", type=float, default=12.0, help="bria.mp3 seconds (Mimi + agreement)")
    parser.add_argument("--mimi", type=Path, help="a real-size random Mimi file (default: build one, ~1 min)")
    parser.add_argument("--workdir", type=Path, help="where the checkpoint is written (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--skip-mimi", action="store_true", help="do not time Mimi (its codes are still used)")
    return parser.parse_args(argv)


def architecture_config(arch: str) -> dict:
    """The ``config.json`` of a registry architecture or of a directory holding one (a deep copy: the reference's
    builder and ours each get their own nested dicts)."""
    directory = Path(arch)
    if (directory / "config.json").is_file():
        return json.loads((directory / "config.json").read_text(encoding="utf-8"))
    return released_config(arch)


def stt_phases(ref_lm, ours: LM, codes: torch.Tensor, timings: dict[str, Timing], args) -> dict[str, float]:
    """fp32, then the first ``--quantize`` mode (in place), each against the reference fp32; agreement figures."""
    mode = args.quantize[0]
    timings.update(lm_phase("fp32", ref_lm, ours, codes, args))
    fp32_run = text_logits_run(ours, codes, None)
    ours = quantize_lm(ours, mode)
    report = ours.quantization
    print(f"quantized {report.tensors} weights: {report.bytes_before / 2**30:.2f} -> "
          f"{report.bytes_after / 2**30:.2f} GiB (groups of {report.group_size}, {report.kernel_used} kernel)")
    quantized = lm_phase(mode, ref_lm, ours, codes, args)
    timings.update({k + "@int8" if k.startswith("ref_") else k.replace(f"_{mode}_", "_int8_"): v
                    for k, v in quantized.items()})
    return agreement(fp32_run, text_logits_run(ours, codes, fp32_run[1]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.quantize and architecture_config(args.arch).get("model_type") != "tts":
        print("vs_reference.py: an STT architecture needs one --quantize mode", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    started = time.time()
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores, load {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="dsm-vs-ref-") as tmp:
        workdir = args.workdir or Path(tmp)
        mimi_path = args.mimi
        if mimi_path is None:
            from make_fixtures import make_real_mimi

            mimi_path = make_real_mimi(Path(tmp) / "mimi.safetensors")
        frames = speech_frames(args.speech_seconds)
        codes = speech_codes(mimi_path, frames)
        timings = {} if args.skip_mimi else bench_mimi(mimi_path, frames, codes, args.rounds)
        config = architecture_config(args.arch)
        lm_kwargs = {k: copy.deepcopy(v) for k, v in config.items() if k not in NON_LM_KEYS}
        ref_lm = random_reference_lm(lm_kwargs, args.seed)
        checkpoint = write_checkpoint(ref_lm, config, mimi_path, workdir)
        print(f"weights ready after {time.time() - started:.0f} s")
        if config.get("model_type") == "tts":
            timings.update(tts_phases(ref_lm, checkpoint, config, args))
            del ref_lm
            lines, agree = tts_summary(timings, args), {}
        else:
            ours = load_lm(checkpoint, dtype=torch.float32)
            agree = stt_phases(ref_lm, ours, codes, timings, args)
            del ref_lm, ours
            lines = summary(timings, agree, args)
    print(f"\n{args.arch} random weights, {args.threads} threads, medians of {args.rounds} interleaved rounds "
          f"({time.time() - started:.0f} s in all; load now {os.getloadavg()[0]:.1f})")
    print("\n".join(lines))
    if args.json:
        payload = {"arch": args.arch, "threads": args.threads, "rounds": args.rounds, "steps": args.steps,
                   "timings": {k: asdict(v) for k, v in timings.items()}, "agreement": agree}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
