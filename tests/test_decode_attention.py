"""The native decode attention (``dsmcli/kernels/decode_attention.cpp``) against SDPA, its batch independence,
and its use by the LM's KV rings: only where asked (a quantized model's stream under ``EngineOptions.kernels``
auto or native, see ``LM.attention_kernels``; or rings made with an explicit attention choice), over float16
rings, with text logits within cosine 0.99999 of the float32 SDPA path, the ring wrapping included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsmcli.engine import LM, EngineOptions, LMStream, SamplingOptions
from dsmcli.engine.quantize import quantize_lm
from dsmcli.kernels import KernelChoice
from dsmcli.kernels.attention import decode_attention_op
from dsmcli.hub.loaders import load_lm, load_mimi

REL_TOL = 1e-5  # another float summation order, relative to the largest output

needs_native = pytest.mark.skipif(decode_attention_op("auto") is None, reason="the native kernel cannot be built here")


def _mask(batch: int, span: int, generator: torch.Generator) -> torch.Tensor:
    mask = torch.rand(batch, 1, 1, span, generator=generator) > 0.4
    mask[..., -1] = True  # every slot sees at least its newest key, as the rings guarantee
    return mask


@needs_native
@pytest.mark.parametrize("batch,heads,cells,head_dim,span", [(1, 16, 751, 128, 751), (1, 16, 751, 128, 9),
                                                              (3, 4, 41, 64, 40), (2, 2, 20, 16, 1),
                                                              (2, 3, 100, 256, 77)])
@pytest.mark.parametrize("storage", [torch.float32, torch.float16])
def test_native_attention_matches_sdpa(batch, heads, cells, head_dim, span, storage):
    """Against SDPA on the same (float16-rounded) keys and values: float rounding apart, the same numbers."""
    generator = torch.Generator().manual_seed(span + head_dim)
    q = torch.randn(batch, heads, 1, head_dim, generator=generator)
    keys, values = (torch.randn(batch, heads, cells, head_dim, generator=generator).to(storage) for _ in range(2))
    mask = _mask(batch, span, generator)
    out = decode_attention_op("auto")(q, keys, values, mask)
    keys, values = keys[:, :, :span].float(), values[:, :, :span].float()
    expected = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    assert out.shape == expected.shape
    assert (out - expected).abs().max() <= REL_TOL * expected.abs().max()


@needs_native
def test_native_attention_slots_do_not_depend_on_batch_mates():
    generator = torch.Generator().manual_seed(0)
    q, keys, values = (torch.randn(4, 2, n, 32, generator=generator) for n in (1, 60, 60))
    mask = _mask(4, 50, generator)
    together = decode_attention_op("auto")(q, keys, values, mask)
    for slot in range(4):
        alone = decode_attention_op("auto")(q[slot:slot + 1].contiguous(), keys[slot:slot + 1].contiguous(),
                                      values[slot:slot + 1].contiguous(), mask[slot:slot + 1].contiguous())
        assert torch.equal(alone[0], together[slot])


def _logits(lm: LM, codes: torch.Tensor, kernels: str = "auto",
            attention: KernelChoice | None = None) -> tuple[torch.Tensor, bool]:
    """Greedy text logits of a stream under ``EngineOptions(kernels=kernels)``; ``attention``: the backbone's rings
    made with that attention choice instead of the one the model and the options give."""
    stream = LMStream(lm, SamplingOptions.greedy(), engine=EngineOptions(kernels=kernels))
    state = stream.init_state(1)
    if attention is not None:
        state.backbone = lm.transformer.init_state(1, lm.config.transformer.context, lm.device, lm.dtype,
                                                   attention=attention)
    logits = [stream.step(codes[:, :, t:t + 1], state).text_logits[0].clone() for t in range(codes.shape[-1])]
    rings = state.backbone.rings
    assert rings.keys[0].dtype == (torch.float16 if rings.native is not None else torch.float32)
    return torch.stack(logits), rings.native is not None


@needs_native
def test_lm_uses_native_attention_only_when_asked(tiny_stt, bria_24k):
    mimi = load_mimi(tiny_stt)
    codes = mimi.encode(torch.from_numpy(bria_24k(6.0))[None, None])  # 75 steps: the tiny ring wraps
    model = load_lm(tiny_stt, dtype=torch.float32)
    assert model.config.transformer.context < codes.shape[-1]
    sdpa, used = _logits(model, codes)
    assert not used
    assert not _logits(model, codes[..., :3], kernels="native")[1]  # a float model always attends with SDPA
    native, used = _logits(model, codes, attention=KernelChoice.AUTO)
    assert used
    cosine = torch.cosine_similarity(native, sdpa, dim=-1)
    print(f"float16 rings + native attention vs float32 SDPA: max abs {float((native - sdpa).abs().max()):.2e} "
          f"(largest logit {float(sdpa.abs().max()):.2f}), cosine min {float(cosine.min()):.7f}")
    assert float(cosine.min()) >= 0.99999
    assert (native - sdpa).abs().max() <= 2e-3 * sdpa.abs().max()
    quantized = quantize_lm(model, "int8")
    assert quantized.attention_kernels("auto") is KernelChoice.AUTO
    assert _logits(quantized, codes[..., :3])[1] and _logits(quantized, codes[..., :3], kernels="native")[1]
    assert not _logits(quantized, codes[..., :3], kernels="torch")[1]  # the stream's choice decides
