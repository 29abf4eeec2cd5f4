"""The depformer's native sub-steps (``dsmcli/kernels/depformer_step.cpp``) against its torch path, and the
step engine's ``audio_needed`` (the depformer stops before codebooks the caller discards, same random draws).

The tiny-tts depformer is 32 wide (its quantized linears fall back to torch), so the quantized cases use the same
architecture with a 64-wide depformer (random weights): the native op then runs the int8 / int4 kernels.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from dsmcli.bench.models import random_lm
from dsmcli.engine import LM, ConditionInputs, LMConfig, LMStream, SamplingOptions, StepHooks, TensorCondition
from dsmcli.engine.config import ZERO_TOKEN_ID
from dsmcli.engine.depformer_native import AUTO, HELPER, POOL, SERIAL, ModeTuner
from dsmcli.engine.quantize import QuantMethod
from dsmcli.hub.checkpoint import load_checkpoint
from dsmcli.hub.loaders import load_lm

LOGIT_RTOL = 1e-5  # native vs torch depformer logits, relative to their peak (float rounding: ~2e-7 measured)
# quantized: the int8/int4 kernels round each activation row to int16 steps, so float-rounding differences of the
# inputs can move a step (2^-15 of the row's peak) and grow through the layers (~4e-5 measured)
QUANTIZED_RTOL = 3e-4
STEPS = 6

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the native kernels cannot be built")


def _wide_depformer_lm(tiny_tts: str, method: str) -> LM:
    kwargs = dict(load_checkpoint(tiny_tts).lm_kwargs)
    kwargs.update(depformer_dim=64, depformer_dim_feedforward=192, depformer_num_heads=2,  # FFN hidden 128
                  depformer_low_rank_embeddings=64)  # every depformer linear on the native kernels
    return random_lm(LMConfig.from_dict(kwargs), torch.device("cpu"), torch.float32, 7, QuantMethod(method))


def _condition(lm: LM, batch: int = 1) -> ConditionInputs:
    generator = torch.Generator().manual_seed(3)
    values = {c.name: [c.possible_values[0]] * batch for c in lm.config.conditioners if c.possible_values}
    tensors = {c.name: TensorCondition.full(torch.randn(batch, 20, c.dim, generator=generator))
               for c in lm.config.conditioners if not c.possible_values}
    return ConditionInputs(values, tensors)


def _run(lm: LM, native: bool, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Depformer logits of every sub-step ``[steps * G, B, card]`` and the audio tokens ``[steps, B, G]``."""
    depformer = lm.depformer
    assert depformer is not None
    depformer.native_step = native
    depformer.native_frame = False  # the per-sub-step path: its logits are captured here
    captured: list[torch.Tensor] = []
    original = depformer.logits

    def capture(*args, **kwargs):
        out = original(*args, **kwargs)
        captured.append(out.clone())
        return out

    depformer.logits = capture  # type: ignore[method-assign]
    try:
        stream = LMStream(lm, SamplingOptions.greedy())
        state = stream.init_state(batch, _condition(lm, batch))
        assert (state.depformer is not None) and ((state.depformer.native_keys is not None) == native)
        audio = [stream.step(None, state).audio_tokens for _ in range(STEPS)]
    finally:
        del depformer.logits
        depformer.native_frame = True
    return torch.stack(captured), torch.stack(audio)


def _assert_close(native: tuple[torch.Tensor, torch.Tensor], torch_path: tuple[torch.Tensor, torch.Tensor],
                  rtol: float = LOGIT_RTOL) -> None:
    peak = float(torch_path[0].abs().max())
    assert float((native[0] - torch_path[0]).abs().max()) <= rtol * peak
    assert torch.equal(native[1], torch_path[1])


def test_native_depformer_matches_torch_float32(tiny_tts):
    lm = load_lm(tiny_tts, dtype=torch.float32)
    assert lm.depformer is not None and lm.depformer.native(torch.float32, "cpu") is not None
    # the stream's kernel choice decides: torch builds no runner (and no native cache) for the stream
    plain = lm.depformer.init_state(1, "cpu", torch.float32, "torch")
    assert plain.native is None and plain.native_keys is None
    assert lm.depformer.init_state(1, "cpu", torch.float32, "auto").native is not None
    _assert_close(_run(lm, True), _run(lm, False))


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_native_depformer_matches_torch_quantized(tiny_tts, method):
    lm = _wide_depformer_lm(tiny_tts, method)
    native = lm.depformer.native(torch.float32, "cpu") if lm.depformer is not None else None
    assert native is not None
    kinds = {"int8": 1, "int4": 2}[method]
    assert all(native.arguments(k) is not None and kinds in native.arguments(k)[1] for k in range(lm.config.dep_q))
    _assert_close(_run(lm, True), _run(lm, False), QUANTIZED_RTOL)


def test_native_depformer_batch_invariant_and_deterministic(tiny_tts):
    lm = _wide_depformer_lm(tiny_tts, "int4")
    depformer = lm.depformer
    assert depformer is not None
    generator = torch.Generator().manual_seed(11)
    hidden = torch.randn(3, 1, lm.config.dim, generator=generator)
    previous = torch.tensor([5, 17, 200])

    def logits(rows: slice) -> list[torch.Tensor]:
        state = depformer.init_state(rows.stop - rows.start, "cpu", torch.float32)
        out, prev = [], previous[rows]
        for k in range(lm.config.dep_q):
            out.append(depformer.logits(k, prev, hidden[rows], state))
            prev = out[-1].argmax(-1)
        return out

    batch, alone = logits(slice(0, 3)), logits(slice(1, 2))
    assert all(torch.equal(b[1:2], a) for b, a in zip(batch, alone))
    assert all(torch.equal(a, b) for a, b in zip(logits(slice(0, 3)), batch))


@pytest.mark.parametrize("needed", [0, 1, 3])
def test_audio_needed_stops_the_depformer_with_the_same_draws(tiny_tts, needed):
    """A stream that skips codebooks >= ``needed`` at its first steps samples exactly what the full stream samples
    when those codebooks are forced to -1 (what ``dsm speak`` does during the audio delay)."""
    lm = load_lm(tiny_tts, dtype=torch.float32)
    options = SamplingOptions(temp=0.8, top_k=5, text_temp=0.7, text_top_k=3)
    skip_steps = 3

    def force(audio: torch.Tensor, info) -> torch.Tensor:
        if int(info.offsets[0]) < skip_steps:
            audio = audio.clone()
            audio[:, needed:] = ZERO_TOKEN_ID
        return audio

    runs = []
    for skipping in (False, True):
        stream = LMStream(lm, options, hooks=StepHooks(audio_tokens=force),
                          generator=torch.Generator().manual_seed(5))
        state = stream.init_state(1, _condition(lm))
        outs = []
        for step in range(8):
            limit = needed if skipping and step < skip_steps else None
            out = stream.step(None, state, audio_needed=limit)
            outs.append(torch.cat([out.text_tokens[:, None], out.audio_tokens], dim=1))
        runs.append(torch.stack(outs))
    assert torch.equal(runs[0], runs[1])
    assert bool((runs[1][:skip_steps, :, 1 + needed:] == ZERO_TOKEN_ID).all())
    assert bool((runs[1][skip_steps:, :, 1:] >= 0).all())


def test_quantizing_after_a_float_stream_gives_a_native_runner_of_the_quantized_weights(tiny_tts):
    from dsmcli.engine.quantize import Int4Weight, quantize_lm

    lm = _wide_depformer_lm(tiny_tts, "none")
    _run(lm, True)  # the float runner is built and used
    lm = quantize_lm(lm, "int4")
    native = lm.depformer.native(torch.float32, "cpu") if lm.depformer is not None else None
    assert native is not None and native.arguments(0) is not None
    assert 2 in native.arguments(0)[1] and not any(isinstance(t, Int4Weight) for t in native.arguments(0)[0])
    _assert_close(_run(lm, True), _run(lm, False), QUANTIZED_RTOL)


def _tokens(lm: LM, frame: bool, options: SamplingOptions, batch: int, steps: int = STEPS) -> torch.Tensor:
    """Text and audio tokens ``[steps, B, 1 + G]`` of a stream, the depformer's sub-steps in one native frame call
    or one native call each."""
    depformer = lm.depformer
    assert depformer is not None
    depformer.native_frame = frame
    calls = []
    original = depformer.sample_frame

    def count(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out is not None)
        return out

    depformer.sample_frame = count  # type: ignore[method-assign]
    try:
        stream = LMStream(lm, options, generator=torch.Generator().manual_seed(5))
        state = stream.init_state(batch, _condition(lm, batch))
        outs = []
        for _ in range(steps):
            out = stream.step(None, state)
            outs.append(torch.cat([out.text_tokens[:, None], out.audio_tokens], dim=1))
    finally:
        del depformer.sample_frame
        depformer.native_frame = True
    assert calls and all(calls) == frame and any(calls) == frame
    return torch.stack(outs)


SAMPLED = SamplingOptions(temp=0.8, top_k=5, text_temp=0.7, text_top_k=3)


@pytest.mark.parametrize("method", ["none", "int8", "int4"])
@pytest.mark.parametrize("options", [SAMPLED, SamplingOptions.greedy(), SamplingOptions(temp=1.0, top_k=0),
                                     SamplingOptions(temp=0.8, top_k=5, cfg_coef=2.0)],
                         ids=["top-k", "greedy", "no-top-k", "cfg"])
def test_native_frame_samples_what_the_sub_steps_sample(tiny_tts, method, options):
    """One native call per frame (sampling included) gives the tokens of one call per sub-step plus torch
    sampling, bit for bit: same logits, same random draws in the same order."""
    lm = _wide_depformer_lm(tiny_tts, method) if method != "none" else load_lm(tiny_tts, dtype=torch.float32)
    assert lm.depformer is not None
    native = lm.depformer.native(torch.float32, "cpu")
    assert native is not None and native.frame_arguments() is not None
    expected = _tokens(lm, False, options, 2)
    # AUTO (the default, exercised by this first run): SERIAL or HELPER, tuned (float models included)
    assert torch.equal(_tokens(lm, True, options, 2, steps=8), _tokens(lm, False, options, 2, steps=8))
    assert native.threads_mode() in (SERIAL, HELPER)
    for threads in (POOL, SERIAL, HELPER):
        native.frame_threads = threads
        assert native.threads_mode() == threads
        # HELPER: every linear halved between two threads (kinds 5-7)
        split = native.frame_arguments(native.threads_mode() == HELPER)
        assert split is not None and any(kind >= 5 for kind in split[1]) == (threads == HELPER)
        assert not any(kind >= 5 for kind in native.frame_arguments()[1])
        assert torch.equal(_tokens(lm, True, options, 2), expected)
    native.frame_threads = AUTO


def test_mode_tuner_tries_both_then_follows_the_faster_and_probes():
    tuner = ModeTuner()
    seen = []
    for _ in range(2 * ModeTuner.TRIALS):
        mode = tuner.choose()
        seen.append(mode)
        tuner.record(mode, 0.05 if mode == HELPER else 0.08)
    assert seen.count(SERIAL) == seen.count(HELPER) == ModeTuner.TRIALS
    picks = []
    for _ in range(3 * ModeTuner.PROBE_EVERY):
        mode = tuner.choose()
        picks.append(mode)
        tuner.record(mode, 0.05 if mode == HELPER else 0.08)
    assert 2 <= picks.count(SERIAL) <= 4 and picks.count(HELPER) == len(picks) - picks.count(SERIAL)
    for _ in range(3 * ModeTuner.PROBE_EVERY):  # the machine gets busy: HELPER becomes the slow one
        mode = tuner.choose()
        tuner.record(mode, 0.16 if mode == HELPER else 0.09)
    assert tuner.choose() == SERIAL or tuner.frames % ModeTuner.PROBE_EVERY == ModeTuner.PROBE_EVERY - 1


def test_native_frame_batch_invariant_and_deterministic(tiny_tts):
    lm = _wide_depformer_lm(tiny_tts, "int4")
    batch = _tokens(lm, True, SamplingOptions.greedy(), 3)
    assert torch.equal(batch, _tokens(lm, True, SamplingOptions.greedy(), 3))
    alone = _tokens(lm, True, SamplingOptions.greedy(), 1)
    assert torch.equal(batch[:, :1], alone)
