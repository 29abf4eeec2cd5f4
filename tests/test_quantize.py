"""Int8 weight quantization of the LM (``dsmcli.engine.quantize``): group-wise scales, the native kernel against
exact float arithmetic, batch invariance, the stand-in weight object, and the quantized tiny models against
their own float32 path, teacher-forced on real speech codes.

Measured when written (tiny-stt, 100 steps of bria.mp3; dim 64 = one group of 64 per row): text-logit cosine
min 0.9998 / mean 0.9999, greedy agreement 96 %, disagreements only at fp32 top-2 margins <= 0.04 (logit std ~1).
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from dsmcli.engine import (
    LM,
    ConditionInputs,
    LMStream,
    SamplingOptions,
    StepHooks,
    TensorCondition,
)
import dsmcli.engine.quantize as quantize_module
from dsmcli.engine.quantize import (
    GROUP_SIZE,
    INT8_MAX,
    Int4Weight,
    Int8Kernel,
    Int8Weight,
    QuantMethod,
    WeightQuantizer,
    group_size_for,
    quantize_lm,
    quantize_rows,
)
from dsmcli.kernels import DISABLE_ENV
from dsmcli.kernels.linear import int8_linear_op
from dsmcli.hub.loaders import load_lm, load_mimi

LINEAR_RTOL = 0.02  # relative L2 error of one int8 linear against the float weight (~0.5-0.9 % measured)
NATIVE_RTOL = 1e-4  # native kernel vs exact float64 math on the dequantized weight (int16 activations: ~3e-5)
COSINE_MIN = 0.998  # text logits, quantized vs float, per step (tiny models: dim 64)
CLEAR_MARGIN = 0.1  # fp32 top-2 logit margin above which greedy tokens must agree
SPEECH_SECONDS = 8.0

needs_native = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                   reason="no C++ compiler: the native kernel cannot be built")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_quantize_rows_bounds_per_group():
    weight = torch.randn(32, 256)
    weight[3] = 0.0
    weight[5, 64:128] *= 100.0  # one loud group must not coarsen its neighbours
    q, scale = quantize_rows(weight, 64)
    assert q.dtype == torch.int8 and q.shape == (32, 256) and scale.shape == (32, 4)
    assert int(q.min()) >= -INT8_MAX and int(q.max()) <= INT8_MAX
    dequantized = (q.float().view(32, 4, 64) * scale[..., None]).view(32, 256)
    assert torch.all((dequantized - weight).abs().view(32, 4, 64) <= scale[..., None] / 2 + 1e-6)
    assert torch.equal(q[3], torch.zeros_like(q[3]))
    assert float(scale[5, 1]) > 50 * float(scale[5, 0])
    with pytest.raises(ValueError, match="does not divide"):
        quantize_rows(torch.randn(4, 100), 64)


@pytest.mark.parametrize("weight_class", [Int8Weight, Int4Weight])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantizing_in_slices_gives_the_same_bits(monkeypatch, weight_class, dtype):
    """Blocks of rows (here 3 rows of 128 at a time, a stacked [W, out, in] weight) quantize to the bits of the
    whole weight at once: codes, scales, group sums, shapes."""
    weight = torch.randn(3, 40, 128, generator=torch.Generator().manual_seed(5)).to(dtype)
    monkeypatch.setattr(quantize_module, "SLICE_VALUES", 1 << 40)
    whole = weight_class.from_float(weight)
    monkeypatch.setattr(quantize_module, "SLICE_VALUES", 3 * 128)
    sliced = weight_class.from_float(weight)
    assert sliced.q.shape == whole.q.shape and sliced.scale.shape == whole.scale.shape
    assert sliced.q.is_contiguous() and sliced.scale.is_contiguous() and sliced.dtype == dtype
    assert torch.equal(sliced.q, whole.q) and torch.equal(sliced.scale, whole.scale)
    if weight_class is Int8Weight:
        assert torch.equal(sliced.group_sums, whole.group_sums)


def test_indexed_views_share_the_group_sums():
    """An indexed view (``in_proj[k]``) reads its parent's group sums, not a recomputed copy."""
    weight = Int8Weight.from_float(torch.randn(2, 64, 256))
    view = weight[1]
    assert view.group_sums.data_ptr() == weight.group_sums[1].data_ptr()
    expected = view.q.unflatten(-1, (-1, view.group_size)).sum(dim=-1, dtype=torch.int32)
    assert torch.equal(view.group_sums, expected)


def test_group_size_for_widths():
    assert group_size_for(2048) == GROUP_SIZE == 128
    assert group_size_for(5632) == 128 and group_size_for(2816) == 128  # stt/tts FFN widths
    assert group_size_for(192) == 64 and group_size_for(64) == 64
    assert group_size_for(30) == 30 and group_size_for(8) == 8  # one group per row


@needs_native
def test_native_kernel_builds_here():
    assert int8_linear_op("auto") is not None
    assert Int8Weight.from_float(torch.randn(16, 128)).resolved_kernel() is Int8Kernel.NATIVE


@needs_native
@pytest.mark.parametrize("group_size", [64, 128, 256])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 17])
def test_native_kernel_matches_exact_math(rows, group_size):
    """Every row-block path of the kernel (4, 2, 1 rows; 8-row weight blocks and a ragged tail of N)."""
    generator = torch.Generator().manual_seed(rows * 1000 + group_size)
    weight = torch.randn(37, 512, generator=generator)
    quantized = Int8Weight.from_float(weight, Int8Kernel.NATIVE, group_size)
    assert quantized.group_size == group_size and quantized.resolved_kernel() is Int8Kernel.NATIVE
    x = torch.randn(rows, 512, generator=generator) * torch.logspace(-2, 2, 512)  # uneven activations
    dequantized = quantized.dequantize(torch.float64)
    exact = x.double() @ dequantized.T
    out = F.linear(x, quantized)
    assert out.dtype == torch.float32 and out.shape == (rows, 37)
    # activations are rounded to int16 steps of max|row| / 32767: at most half a step times sum|w| per output
    step = x.abs().amax(dim=-1, keepdim=True).double() / 32767
    bound = 0.5 * step * dequantized.abs().sum(dim=-1) + 1e-6 * exact.abs().max()
    assert torch.all((out.double() - exact).abs() <= bound)
    plain = torch.randn(rows, 512, generator=generator)  # typical activations: far inside that bound
    exact_plain = plain.double() @ dequantized.T
    assert float((F.linear(plain, quantized).double() - exact_plain).abs().max()) <= (
        NATIVE_RTOL * float(exact_plain.abs().max()))
    assert _rel(out, F.linear(x, weight)) < LINEAR_RTOL


@needs_native
def test_native_rows_do_not_depend_on_batch_mates():
    quantized = Int8Weight.from_float(torch.randn(40, 256), Int8Kernel.NATIVE)
    row = torch.randn(1, 256)
    alone = F.linear(row, quantized)
    for mates in (1, 2, 3, 4, 7, 15):
        batch = torch.cat([1000 * torch.randn(mates, 256), row, torch.randn(mates, 256)])
        assert torch.equal(F.linear(batch, quantized)[mates], alone[0]), f"{mates} mates on each side"


def test_dequantize_kernel_is_exact_float_math():
    weight, bias = torch.randn(48, 128), torch.randn(48)
    quantized = Int8Weight.from_float(weight, Int8Kernel.DEQUANTIZE)
    x = torch.randn(3, 5, 128)
    out = F.linear(x, quantized, bias)  # dispatched through __torch_function__
    assert out.shape == (3, 5, 48) and out.dtype == x.dtype
    assert torch.equal(out, F.linear(x, quantized.dequantize(), bias))
    assert _rel(out, F.linear(x, weight, bias)) < LINEAR_RTOL


def test_auto_kernel_falls_back_where_native_cannot_run():
    for width in (8, 30, 96 + 8):  # no group size that is a multiple of 64
        weight, x = torch.randn(7, width), torch.randn(2, width)
        quantized = Int8Weight.from_float(weight)
        assert quantized.resolved_kernel() is Int8Kernel.DEQUANTIZE
        assert torch.equal(F.linear(x, quantized), F.linear(x, quantized.dequantize()))


def test_disabling_native_kernels(monkeypatch):
    weight = torch.randn(16, 128)
    assert Int8Weight.from_float(weight, kernels="torch").resolved_kernel() is Int8Kernel.DEQUANTIZE  # the choice
    monkeypatch.setenv(DISABLE_ENV, "1")  # the documented override: torch whatever the choice
    assert Int8Weight.from_float(weight).resolved_kernel() is Int8Kernel.DEQUANTIZE


def test_a_quantized_weight_is_a_declared_holder():
    """The quantized weight takes the parameter's place as a submodule with ``q`` / ``scale`` buffers: in
    ``state_dict()``, loadable into another quantized module, moved by ``.to()``."""
    module = torch.nn.Linear(128, 16, bias=False)
    x = torch.randn(2, 128)
    WeightQuantizer("int8").replace(module, "weight", module.weight.detach())
    assert "weight" not in module._parameters and isinstance(module._modules["weight"], Int8Weight)
    assert list(module.state_dict()) == ["weight.q", "weight.scale"]  # group_sums is derived, not saved
    other = torch.nn.Linear(128, 16, bias=False)
    WeightQuantizer("int8").replace(other, "weight", torch.zeros(16, 128))
    other.load_state_dict(module.state_dict())
    assert torch.equal(other(x), module(x)) and torch.equal(other.weight.group_sums, module.weight.group_sums)
    before = module(x)
    module.to(torch.bfloat16)  # a model-wide cast: integer codes and float32 scales are left as they are
    assert module.weight.scale.dtype == torch.float32 and torch.equal(module(x), before)
    moved = module.to("meta")
    assert moved.weight.device.type == "meta" and moved.weight.q.device.type == "meta"


def test_indexing_and_unsupported_ops():
    stacked = torch.randn(3, 12, 64)
    quantized = Int8Weight.from_float(stacked)
    x = torch.randn(2, 64)
    assert quantized[1].shape == (12, 64) and quantized[1].group_size == 64
    assert _rel(F.linear(x, quantized[1]), x @ stacked[1].T) < LINEAR_RTOL
    assert _rel(F.linear(x, quantized[0, 4:]), x @ stacked[0, 4:].T) < LINEAR_RTOL
    with pytest.raises(IndexError):
        quantized[0, :, :4]
    with pytest.raises(IndexError):
        quantized[torch.tensor([0])]
    with pytest.raises(ValueError, match="index it first"):
        F.linear(x, quantized)
    with pytest.raises(TypeError, match="not supported on an int8-quantized weight"):
        torch.add(quantized, 1)  # type: ignore[arg-type]


def _speech_codes(repo: str, bria_24k) -> torch.Tensor:
    mimi = load_mimi(repo)
    return mimi.encode(torch.from_numpy(bria_24k(SPEECH_SECONDS))[None, None])  # [1, n_q, T]


def _stt_run(lm: LM, codes: torch.Tensor, forced: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy text logits ``[T, V]`` and argmax tokens; ``forced`` tokens are fed back instead (teacher forcing)."""
    index = [0]
    hook = None if forced is None else (lambda token, _info: forced[index[0]].view(1))
    stream = LMStream(lm, SamplingOptions.greedy(), hooks=StepHooks(text_token=hook))
    state = stream.init_state(1)
    logits = []
    for t in range(codes.shape[-1]):
        index[0] = t
        logits.append(stream.step(codes[:, :, t : t + 1], state).text_logits[0].clone())
    stacked = torch.stack(logits)
    return stacked, stacked.argmax(-1)


def _assert_close_run(ref: tuple[torch.Tensor, torch.Tensor], quant: tuple[torch.Tensor, torch.Tensor]) -> None:
    cosine = torch.cosine_similarity(ref[0], quant[0], dim=-1)
    assert float(cosine.min()) >= COSINE_MIN, f"text-logit cosine down to {float(cosine.min()):.5f}"
    top = ref[0].topk(2, dim=-1).values
    clear = (top[:, 0] - top[:, 1]) > CLEAR_MARGIN
    assert torch.equal(ref[1][clear], quant[1][clear]), "greedy tokens differ away from near-ties"


def test_quantized_stt_follows_float(tiny_stt, bria_24k):
    codes = _speech_codes(tiny_stt, bria_24k)
    reference = load_lm(tiny_stt, dtype=torch.float32)
    model = load_lm(tiny_stt, dtype=torch.float32)
    linear_tensors = 4 * model.config.transformer.num_layers + 1 + model.config.extra_heads_num_heads
    model = quantize_lm(model, "int8")
    report = model.quantization
    assert report is not None
    assert (report.method, report.kernel, report.tensors) == (QuantMethod.INT8, Int8Kernel.AUTO, linear_tensors)
    assert report.bytes_after < report.bytes_before / 3
    assert report.kernel_used in ("native", "mixed", "dequantize")
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    state = model.state_dict()  # the quantized weights' buffers, declared where the float weights were
    assert "text_linear.weight" not in state and state["text_linear.weight.q"].dtype == torch.int8
    assert isinstance(model.text_linear.weight, Int8Weight) and "weight" in model.text_linear._modules
    fp32 = _stt_run(reference, codes, None)
    _assert_close_run(fp32, _stt_run(model, codes, fp32[1]))


def test_quantize_none_leaves_the_model_alone(tiny_stt):
    model = load_lm(tiny_stt, dtype=torch.float32)
    before = {k: v.data_ptr() for k, v in model.state_dict().items()}
    assert quantize_lm(model, QuantMethod.NONE) is model and model.quantization is None
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == before


def _tts_condition(lm: LM) -> ConditionInputs:
    generator = torch.Generator().manual_seed(3)
    values = {c.name: [c.possible_values[0]] for c in lm.config.conditioners if c.possible_values}
    tensors = {c.name: TensorCondition.full(torch.randn(1, 20, c.dim, generator=generator))
               for c in lm.config.conditioners if not c.possible_values}
    return ConditionInputs(values, tensors)


def test_quantized_tts_depformer_follows_float(tiny_tts):
    """Backbone, cross-attention, demuxed text embedding and the scheduled depformer all quantized; text and audio
    tokens teacher-forced from the float run so both see the same inputs."""
    reference, model = load_lm(tiny_tts, dtype=torch.float32), load_lm(tiny_tts, dtype=torch.float32)
    model = quantize_lm(model, "int8")
    condition = _tts_condition(reference)
    forced: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = StepHooks(text_token=lambda t, _i: forced[-1][0].clone(), audio_tokens=lambda a, _i: forced[-1][1].clone())
    float_stream = LMStream(reference, SamplingOptions.greedy())
    quant_stream = LMStream(model, SamplingOptions.greedy(), hooks=hooks)
    float_state, quant_state = float_stream.init_state(1, condition), quant_stream.init_state(1, condition)
    cosines = []
    for _ in range(25):
        out = float_stream.step(None, float_state)
        forced.append((out.text_tokens, out.audio_tokens))
        quant = quant_stream.step(None, quant_state)
        cosines.append(float(torch.cosine_similarity(out.text_logits, quant.text_logits, dim=-1)))
        assert torch.equal(quant.frame, out.frame)
    assert min(cosines) >= COSINE_MIN


@pytest.mark.parametrize("kernel", ["auto", "dequantize"])
def test_quantized_bfloat16_model(tiny_stt, kernel):
    reference = load_lm(tiny_stt, dtype=torch.bfloat16)
    model = load_lm(tiny_stt, dtype=torch.bfloat16)
    model = quantize_lm(model, "int8", kernel=kernel)
    assert model.quantization is not None and model.quantization.kernel is Int8Kernel(kernel)
    codes = torch.randint(0, model.config.card, (1, model.config.n_q, 12), generator=torch.Generator().manual_seed(1))
    fp = _stt_run(reference, codes, None)
    quant = _stt_run(model, codes, fp[1])
    assert quant[0].dtype == torch.float32
    assert float(torch.cosine_similarity(fp[0], quant[0], dim=-1).min()) >= 0.99  # bf16 roundings on both sides
