"""Cross-attention on the native decode kernel over float16 source keys/values (quantized CPU models, decided by
the stream's kernel choice: ``TransformerState.cross_native``) against SDPA over the float32 ones."""

from __future__ import annotations

import shutil

import pytest
import torch

from dsmcli.engine.transformer import CrossAttention
from dsmcli.kernels.attention import decode_attention_op

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the native kernels cannot be built")


def _attention(seed: int = 0) -> CrossAttention:
    generator = torch.Generator().manual_seed(seed)
    attention = CrossAttention(64, 2)
    with torch.no_grad():
        attention.in_proj.copy_(torch.randn(attention.in_proj.shape, generator=generator) * 0.1)
        attention.out_proj.copy_(torch.randn(attention.out_proj.shape, generator=generator) * 0.1)
    return attention


def test_native_cross_attention_matches_sdpa_and_is_deterministic():
    op = decode_attention_op("auto")
    assert op is not None
    attention = _attention()
    generator = torch.Generator().manual_seed(1)
    source = torch.randn(3, 40, 64, generator=generator)
    x = torch.randn(3, 1, 64, generator=generator)
    with torch.no_grad():
        expected = attention(x, *attention.project_source(source))
        keys, values = attention.project_source(source, op)
        assert keys.dtype == torch.float16 and keys.is_contiguous() and values.is_contiguous()
        native = attention(x, keys, values, op)
        again = attention(x, *attention.project_source(source, op), op)
    assert native.dtype == expected.dtype and native.shape == expected.shape
    # float16 keys and values: ~1e-3 relative to the output's peak (the quantized path's KV rings are float16 too)
    assert float((native - expected).abs().max()) <= 2e-3 * float(expected.abs().max())
    assert torch.equal(native, again)


def test_the_stream_choice_decides_native_cross_attention(tiny_tts):
    from dsmcli.hub.loaders import load_lm

    quantized = load_lm(tiny_tts, dtype=torch.float32, quantize="int8")
    assert quantized.config.transformer.cross_attention
    source = torch.randn(1, 5, quantized.config.dim)
    with torch.no_grad():
        native = quantized.init_state(1, source, kernels="auto")
        plain = quantized.init_state(1, source, kernels="torch")
        float_model = load_lm(tiny_tts, dtype=torch.float32).init_state(1, source, kernels="native")
    assert native.cross_native is decode_attention_op("auto") and native.cross[0][0].dtype == torch.float16
    assert plain.cross_native is None and plain.cross[0][0].dtype == torch.float32
    assert float_model.cross_native is None and float_model.cross[0][0].dtype == torch.float32
