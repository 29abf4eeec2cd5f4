"""The speed-oriented pieces of the step engine compute what the plain ones do.

* ``dsmcli.nn.linear.linear`` (``(W @ x^T)^T`` / ``torch.mv`` on CPU) vs ``F.linear``;
* the KV rings' bookkeeping, and their prefix attention (a fresh stream attends over the cells written so far)
  vs whole-ring attention (``EngineOptions(static_shapes=True)``, the reference's), on the tiny STT and TTS
  models, with late starts, a pause and a reset;
* ``EngineOptions(compile=True)`` (``torch.compile`` of the model part of a step, on CPU) vs eager.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_engine_slots import STARTS, make_schedule
from test_lm_harness import LOGIT_RTOL, assert_greedy_match, relative_error
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
from dsmcli.nn.kv_rings import KVRings
from dsmcli.engine.quantize import Int8Weight
from dsmcli.nn.linear import linear
from dsmcli.hub.loaders import load_lm

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FP32_RTOL = 1e-5  # another GEMM summation order, relative to the largest output


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 8, 16])
def test_linear_matches_f_linear(rows, dtype, bias):
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(384, 256, generator=generator).to(dtype)
    b = torch.randn(384, generator=generator).to(dtype) if bias else None
    x = torch.randn(rows, 1, 256, generator=generator).to(dtype)
    ours, ref = linear(x, weight, b), F.linear(x, weight, b)
    assert ours.shape == ref.shape == (rows, 1, 384) and ours.dtype == dtype and ours.is_contiguous()
    if rows == 1:  # a matrix-vector product either way: the same kernel
        assert torch.equal(ours, ref)
    tolerance = FP32_RTOL if dtype == torch.float32 else 2**-7
    assert float((ours.float() - ref.float()).abs().max()) <= tolerance * float(ref.float().abs().max())


def test_linear_leaves_int8_weights_to_their_own_kernel():
    quantized = Int8Weight.from_float(torch.randn(64, 32, generator=torch.Generator().manual_seed(0)))
    x = torch.randn(3, 32)
    assert torch.equal(linear(x, quantized), quantized.linear(x))


def test_rings_book_one_step_for_every_layer():
    rings = KVRings.create(num_layers=2, batch_size=3, num_heads=1, capacity=4, head_dim=2, context=4,
                           device="cpu", dtype=torch.float32)
    active = torch.tensor([True, True, False])
    for position in range(6):
        step = rings.advance(torch.tensor([[position], [position], [0]]), active)
        for layer in range(2):
            k = torch.full((3, 1, 1, 2), float(10 * layer + position))
            keys, values = rings.write(layer, step, k, -k)
            assert keys.shape == values.shape == (3, 1, step.span, 2)
        assert step.span == min(position + 1, 4)
        assert step.mask[:2, 0, 0].sum(-1).tolist() == [min(position + 1, 4)] * 2
    # slot 2 never advanced: its ring is empty, it wrote only the scratch cell, and it attends to its one (empty)
    # cell (finite garbage) rather than to nothing (NaN)
    assert (rings.positions[2] == -1).all() and step.mask[2, 0, 0].tolist() == [True, False, False, False]
    assert step.lengths is not None and step.lengths.tolist() == [4, 4, 1]
    assert torch.equal(rings.keys[1][2, 0, :4], torch.zeros(4, 2))
    assert rings.positions[0, :4].tolist() == [4, 5, 2, 3]
    assert rings.keys[1][0, 0, :4, 0].tolist() == [14.0, 15.0, 12.0, 13.0]
    # a reset slot attends over the cells it writes from then on, as a fresh ring would
    rings.reset(torch.tensor([True, False, False]))
    assert (rings.positions[0] == -1).all()
    step = rings.advance(torch.tensor([[0], [6], [0]]), active)
    assert step.lengths is not None and step.lengths.tolist() == [1, 4, 1] and step.span == 4
    assert step.mask[0, 0, 0].tolist() == [True, False, False, False]
    rings.restart()
    assert (rings.positions == -1).all() and rings.filled == 0 and rings.uniform
    step = rings.advance(torch.tensor([[0], [0], [0]]), None)
    assert step.lengths is None and step.span == 1  # every slot at the same step: one host-side length


def _tts_condition(lm: LM, batch: int) -> ConditionInputs:
    dim = lm.config.conditioner("speaker_wavs").dim
    voice = torch.randn(batch, 20, dim, generator=torch.Generator().manual_seed(0))
    return ConditionInputs({"control": ["ok"] * batch, "cfg": ["2.0"] * batch},
                           {"speaker_wavs": TensorCondition.full(voice)})


def _run(lm: LM, engine: EngineOptions, steps: int, condition: ConditionInputs | None = None):
    """Greedy batched run, teacher-forced (fixed text and audio tokens), on the slot schedule of
    test_engine_slots (late starts, a pause, a reset; then every slot active): per step (text logits [B, V],
    sampled text tokens [B], active [B])."""
    schedule = make_schedule()
    batch, config = len(STARTS), lm.config
    generator = torch.Generator().manual_seed(5)
    codes = torch.randint(0, config.card, (steps, batch, config.n_q, 1), generator=generator)
    script = torch.randint(0, config.text_card, (steps, batch), generator=generator)
    sampled: list[Tensor] = []

    def force_text(tokens: Tensor, info: StepInfo) -> Tensor:
        sampled.append(tokens.clone())
        return script[info.offsets, torch.arange(batch)]

    def force_audio(tokens: Tensor, info: StepInfo) -> Tensor:
        return codes[info.offsets, torch.arange(batch), : tokens.shape[1], 0]

    hooks = StepHooks(text_token=force_text, audio_tokens=force_audio)
    stream = LMStream(lm, SamplingOptions.greedy(), hooks=hooks, engine=engine)
    state = stream.init_state(batch, condition)
    outputs = []
    for step in range(steps):
        scheduled = step < len(schedule.active)
        state.reset(torch.tensor(schedule.reset[step] if scheduled else [False] * batch))
        active = torch.tensor(schedule.active[step] if scheduled else [True] * batch)
        audio = codes[step] if stream.num_inputs else None
        out = stream.step(audio, state, active=active)
        outputs.append((out.text_logits.clone(), sampled[-1], active))
    return outputs


@pytest.mark.parametrize("which", ["stt", "tts"])
def test_prefix_attention_equals_whole_ring_attention(which, tiny_stt, tiny_tts):
    lm = load_lm(tiny_stt if which == "stt" else tiny_tts, dtype=torch.float32)
    condition = _tts_condition(lm, len(STARTS)) if which == "tts" else None
    steps = lm.config.transformer.context + 10  # past the point where the rings are full
    fast = _run(lm, EngineOptions(), steps, condition)
    static = _run(lm, EngineOptions(static_shapes=True), steps, condition)
    for (logits, tokens, active), (ref_logits, ref_tokens, _) in zip(fast, static):
        assert float(relative_error(logits[active], ref_logits[active]).max()) <= LOGIT_RTOL
        assert_greedy_match(tokens[active], ref_tokens[active], ref_logits[active], which)


def test_compiled_step_equals_eager(tiny_stt):
    """``torch.compile`` on CPU (inductor, ~20-70 s here): same logits and tokens as the eager static step."""
    lm = load_lm(tiny_stt, dtype=torch.float32)
    steps = 12
    eager = _run(lm, EngineOptions(static_shapes=True), steps)
    torch._dynamo.reset()
    compiled = _run(lm, EngineOptions(compile=True), steps)
    for (logits, tokens, active), (ref_logits, ref_tokens, _) in zip(compiled, eager):
        assert float(relative_error(logits[active], ref_logits[active]).max()) <= LOGIT_RTOL
        assert_greedy_match(tokens[active], ref_tokens[active], ref_logits[active], "compiled")


def test_engine_options_validate():
    assert EngineOptions(compile=True).uses_static_shapes and not EngineOptions().uses_static_shapes
    with pytest.raises(ValueError, match="compile_mode"):
        EngineOptions(compile_mode="reduce-overhead")
