"""Int8 weight quantization of the LM (``dsmcli.engine.quantize``): the kernels, the stand-in weight object, and
the quantized tiny models against their own float32 path, teacher-forced on real speech codes.

Measured when written (tiny-stt, 100 steps of bria.mp3, auto = weight-only kernel at batch 1): text-logit cosine
min 0.99975 / mean 0.99990, greedy agreement 96 %, the 4 disagreements at fp32 top-2 margins <= 0.036 (logit
std ~1). The dynamic kernel alone: 0.99926 / 0.99977, 98 %.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsmcli.codec import Mimi
from dsmcli.engine import (
    LM,
    ConditionInputs,
    LMStream,
    SamplingOptions,
    StepHooks,
    TensorCondition,
)
from dsmcli.engine.quantize import (
    INT8_MAX,
    WEIGHT_ONLY_MAX_ROWS,
    Int8Kernel,
    Int8Weight,
    QuantMethod,
    quantize_lm,
    quantize_rows,
)

LINEAR_RTOL = 0.02  # relative L2 error of one int8 linear (K = 64: ~0.9 % measured)
BF16_RTOL = 0.01  # bf16 activations and outputs of the weight-only kernel
COSINE_MIN = 0.998  # text logits, quantized vs float, per step (tiny models: dim 64)
CLEAR_MARGIN = 0.1  # fp32 top-2 logit margin above which greedy tokens must agree
SPEECH_SECONDS = 8.0


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_quantize_rows_bounds():
    weight = torch.randn(32, 48)
    weight[3] = 0.0
    q, scale = quantize_rows(weight)
    assert q.dtype == torch.int8 and scale.shape == (32,)
    assert int(q.min()) >= -INT8_MAX and int(q.max()) <= INT8_MAX
    assert torch.all((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-7)
    assert torch.equal(q[3], torch.zeros_like(q[3]))
    assert torch.equal(scale.bfloat16().float(), scale)  # exact in both kernels


@pytest.mark.parametrize("kernel", [Int8Kernel.DYNAMIC, Int8Kernel.WEIGHT_ONLY])
def test_int8_linear_matches_float(kernel):
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(48, 64, generator=generator), torch.randn(48, generator=generator)
    x = torch.randn(3, 5, 64, generator=generator)
    quantized = Int8Weight.from_float(weight, kernel)
    out = F.linear(x, quantized, bias)  # dispatched through __torch_function__
    assert out.shape == (3, 5, 48) and out.dtype == x.dtype
    assert _rel(out, F.linear(x, weight, bias)) < LINEAR_RTOL
    if kernel is Int8Kernel.WEIGHT_ONLY:  # only bf16 rounding of activations/outputs on top of the int8 weights
        assert _rel(out, F.linear(x, quantized.dequantize(), bias)) < BF16_RTOL


def test_auto_kernel_picks_by_rows():
    weight = torch.randn(40, 64)
    auto, weight_only, dynamic = (Int8Weight.from_float(weight, k) for k in
                                  (Int8Kernel.AUTO, Int8Kernel.WEIGHT_ONLY, Int8Kernel.DYNAMIC))
    few, many = torch.randn(WEIGHT_ONLY_MAX_ROWS, 64), torch.randn(WEIGHT_ONLY_MAX_ROWS + 1, 64)
    assert torch.equal(F.linear(few, auto), F.linear(few, weight_only))
    assert torch.equal(F.linear(many, auto), F.linear(many, dynamic))


def test_dynamic_rows_do_not_depend_on_batch_mates():
    weight = torch.randn(40, 64)
    quantized = Int8Weight.from_float(weight, Int8Kernel.DYNAMIC)
    row = torch.randn(1, 64)
    alone = F.linear(row, quantized)
    with_loud_mate = F.linear(torch.cat([row, 1000 * torch.randn(1, 64)]), quantized)
    assert torch.equal(alone[0], with_loud_mate[0])


def test_narrow_inputs_fall_back_to_the_dynamic_kernel():
    """torch's CPU int8pack kernel crashes for input widths that are not multiples of 16 (e.g. 8, 30)."""
    for width in (8, 30):
        weight, x = torch.randn(7, width), torch.randn(2, width)
        out = F.linear(x, Int8Weight.from_float(weight, Int8Kernel.WEIGHT_ONLY))
        assert torch.equal(out, F.linear(x, Int8Weight.from_float(weight, Int8Kernel.DYNAMIC)))


def test_indexing_and_unsupported_ops():
    stacked = torch.randn(3, 12, 16)
    quantized = Int8Weight.from_float(stacked)
    x = torch.randn(2, 16)
    assert quantized[1].shape == (12, 16)
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
    mimi = Mimi.load(repo)
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
    reference = LM.load(tiny_stt, dtype=torch.float32)
    model = LM.load(tiny_stt, dtype=torch.float32)
    linear_tensors = 4 * model.config.transformer.num_layers + 1 + model.config.extra_heads_num_heads
    report = quantize_lm(model, "int8")
    assert (report.method, report.kernel, report.tensors) == (QuantMethod.INT8, Int8Kernel.AUTO, linear_tensors)
    assert report.bytes_after < report.bytes_before / 3.5
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert "text_linear.weight" not in model.state_dict()
    fp32 = _stt_run(reference, codes, None)
    _assert_close_run(fp32, _stt_run(model, codes, fp32[1]))


def test_quantize_none_leaves_the_model_alone(tiny_stt):
    model = LM.load(tiny_stt, dtype=torch.float32)
    before = {k: v.data_ptr() for k, v in model.state_dict().items()}
    report = quantize_lm(model, QuantMethod.NONE)
    assert report.tensors == 0
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
    reference, model = LM.load(tiny_tts, dtype=torch.float32), LM.load(tiny_tts, dtype=torch.float32)
    quantize_lm(model, "int8")
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


def test_weight_only_kernel_in_bfloat16(tiny_stt):
    reference = LM.load(tiny_stt, dtype=torch.bfloat16)
    model = LM.load(tiny_stt, dtype=torch.bfloat16)
    assert quantize_lm(model, "int8", kernel="weight-only").kernel is Int8Kernel.WEIGHT_ONLY
    codes = torch.randint(0, model.config.card, (1, model.config.n_q, 12), generator=torch.Generator().manual_seed(1))
    fp = _stt_run(reference, codes, None)
    quant = _stt_run(model, codes, fp[1])
    assert quant[0].dtype == torch.float32
    assert float(torch.cosine_similarity(fp[0], quant[0], dim=-1).min()) >= 0.99  # bf16 roundings on both sides
