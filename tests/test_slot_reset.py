"""A batch slot's outputs do not depend on what ran in it before, nor on where it sits in the batch (issue 14).

Input X runs in a fresh batch (slot 0, from the first step, batch mates starting with it or later) and in a
reused one (slot 2, after input Y filled and wrapped its KV ring, paused and was reset; batch mates at other
offsets, one paused while X runs): every text logit, text token and generated audio token of X is the same,
bit for bit (``torch.equal``). Paths: float32 (SDPA), int8 with the native kernels (decode attention over
float16 rings, int8 linears; skipped where they cannot be built), int8 on the torch path (what
``DSM_NO_NATIVE_KERNELS=1`` runs); STT (backbone only) and TTS (depformer rings, cross-attention; native
depformer step and its torch path); one and two torch threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from dsmcli.engine import (
    LM,
    ConditionInputs,
    EngineOptions,
    LMStream,
    SamplingOptions,
    StepHooks,
    StepInfo,
    TensorCondition,
)
from dsmcli.engine.quantize import quantize_lm
from dsmcli.hub.loaders import load_lm
from dsmcli.kernels import KernelChoice
from dsmcli.kernels.attention import decode_attention_op

BATCH = 3
X, Y, P, Q, R = range(5)  # input ids
PATHS = ["float32", "int8-native", "int8-torch"]
MAX_STEPS = 200  # inputs are random codes (STT) or text tokens (TTS) of this many steps


@dataclass(frozen=True)
class Run:
    """Per global step: the input each slot runs (None: paused), and the slots reset before the step."""

    inputs: list[list[int | None]]
    resets: list[list[bool]]


def _fresh(steps: int) -> tuple[Run, int]:
    """X in slot 0 from step 0; P with it; Q from step 3."""
    inputs = [[X, P, Q if t >= 3 else None] for t in range(steps)]
    return Run(inputs, [[False] * BATCH for _ in range(steps)]), 0


def _reused(steps: int, before: int) -> tuple[Run, int]:
    """Slot 2 runs Y for ``before`` steps, pauses 2 steps, is reset and runs X; slot 0 runs R throughout; slot 1
    starts P at step 5 and pauses for 3 steps while X runs."""
    inputs, resets = [], []
    for t in range(before + 2 + steps):
        x_step = t - before - 2
        slot2 = Y if t < before else None if x_step < 0 else X
        slot1 = None if t < 5 or 4 <= x_step < 7 else P
        inputs.append([R, slot1, slot2])
        resets.append([False, False, x_step == 0])
    return Run(inputs, resets), 2


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request) -> Iterator[int]:
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


def _model(path: str, checkpoint: str) -> tuple[LM, KernelChoice]:
    """The model of ``path`` and the kernel choice its streams run under."""
    lm = load_lm(checkpoint, dtype=torch.float32)
    if path == "int8-native":
        if decode_attention_op("auto") is None:
            pytest.skip("the native kernels cannot be built here")
        lm = quantize_lm(lm, "int8")
        assert lm.attention_kernels("auto") is KernelChoice.AUTO
    elif path == "int8-torch":
        lm = quantize_lm(lm, "int8", kernels="torch")
        return lm, KernelChoice.TORCH
    return lm, KernelChoice.AUTO


def _drive(lm: LM, run: Run, slot_of_x: int, condition: ConditionInputs | None,
           kernels: KernelChoice) -> list[tuple[Tensor, ...]]:
    """Greedy batched run of ``run``; X's outputs per step: (text logits, text token, audio tokens or empty)."""
    config = lm.config
    generator = torch.Generator().manual_seed(7)
    steps = len(run.inputs)
    codes = torch.randint(0, config.card, (5, MAX_STEPS, config.n_q), generator=generator)  # per input, offset
    script = torch.randint(0, config.text_card, (5, MAX_STEPS), generator=generator)
    current: list[int | None] = [None] * BATCH

    def text_token(tokens: Tensor, info: StepInfo) -> Tensor:  # TTS: the text is the input
        if lm.depformer is None:
            return tokens
        return torch.stack([script[i or 0, int(info.offsets[b])] for b, i in enumerate(current)])

    stream = LMStream(lm, SamplingOptions.greedy(), hooks=StepHooks(text_token=text_token),
                      engine=EngineOptions(kernels=kernels))
    state = stream.init_state(BATCH, condition)
    native = kernels is not KernelChoice.TORCH and decode_attention_op("auto") is not None and lm.quantization
    assert (state.backbone.rings.native is not None) == bool(native)
    outputs = []
    for t in range(steps):
        state.reset(torch.tensor(run.resets[t]))
        current = run.inputs[t]
        offsets = state.offsets.tolist()
        audio = torch.stack([codes[i or 0, offsets[b]] for b, i in enumerate(current)]) if stream.num_inputs else None
        out = stream.step(audio, state, active=torch.tensor([i is not None for i in current]))
        if current[slot_of_x] == X:
            audio_tokens = torch.empty(0) if out.audio_tokens is None else out.audio_tokens[slot_of_x].clone()
            outputs.append((out.text_logits[slot_of_x].clone(), out.text_tokens[slot_of_x].clone(), audio_tokens))
    return outputs


def _assert_same(fresh: list[tuple[Tensor, ...]], reused: list[tuple[Tensor, ...]]) -> None:
    assert len(fresh) == len(reused) > 0
    for step, (ours, theirs) in enumerate(zip(reused, fresh)):
        for what, a, b in zip(("text logits", "text token", "audio tokens"), ours, theirs):
            assert torch.equal(a, b), f"{what} of X differ at its step {step}: {(a - b).abs().max()}"


@pytest.mark.parametrize("path", PATHS)
def test_stt_slot_after_reset_equals_a_fresh_slot(path, threads, tiny_stt):
    lm, kernels = _model(path, tiny_stt)
    context = lm.config.transformer.context
    steps = context + 10 if threads == 1 else 16  # X and Y wrap the ring (two threads: slow on a busy machine)
    fresh = _drive(lm, *_fresh(steps), None, kernels)
    reused = _drive(lm, *_reused(steps, before=context + 10), None, kernels)
    _assert_same(fresh, reused)


@pytest.mark.parametrize("depformer", ["native-step", "torch-step"])
@pytest.mark.parametrize("path", PATHS)
def test_tts_slot_after_reset_equals_a_fresh_slot(path, depformer, threads, tiny_tts):
    lm, kernels = _model(path, tiny_tts)
    if depformer == "torch-step":
        lm.depformer.native_step = False
    voice = torch.randn(1, 20, lm.config.conditioner("speaker_wavs").dim, generator=torch.Generator().manual_seed(0))
    condition = ConditionInputs({"control": ["ok"] * BATCH, "cfg": ["2.0"] * BATCH},
                                {"speaker_wavs": TensorCondition.full(voice.expand(BATCH, -1, -1))})
    steps = 24 if threads == 1 else 12
    fresh = _drive(lm, *_fresh(steps), condition, kernels)
    reused = _drive(lm, *_reused(steps, before=30), condition, kernels)
    assert any(frame[2].numel() for frame in fresh)  # the depformer ran
    _assert_same(fresh, reused)


@pytest.mark.skipif(decode_attention_op("auto") is None, reason="the native kernel cannot be built here")
@pytest.mark.parametrize("storage", [torch.float32, torch.float16])
def test_native_attention_reads_each_slot_over_its_own_length(storage):
    """The kernel with per-slot lengths: each slot's result is, bit for bit, the kernel's over that slot's prefix
    alone (whatever lies in the cells past it)."""
    generator = torch.Generator().manual_seed(3)
    batch, heads, cells, head_dim = 4, 3, 90, 32
    q = torch.randn(batch, heads, 1, head_dim, generator=generator)
    keys, values = (torch.randn(batch, heads, cells, head_dim, generator=generator).to(storage) for _ in range(2))
    span = 80
    mask = torch.rand(batch, 1, 1, span, generator=generator) > 0.3
    lengths = torch.tensor([80, 1, 37, 64])
    mask[torch.arange(batch), 0, 0, lengths - 1] = True
    out = decode_attention_op("auto")(q, keys, values, mask, lengths)
    for b, n in enumerate(lengths.tolist()):
        alone = decode_attention_op("auto")(q[b : b + 1].contiguous(), keys[b : b + 1, :, :n].contiguous(),
                                      values[b : b + 1, :, :n].contiguous(), mask[b : b + 1, ..., :n].contiguous())
        assert torch.equal(out[b], alone[0])
    with pytest.raises(RuntimeError, match="lengths"):
        decode_attention_op("auto")(q, keys, values, mask, torch.tensor([81, 1, 1, 1]))
