"""Cross-attention on the native decode kernel over float16 source keys/values (quantized CPU models,
:func:`dsmcli.engine.quantize.set_native_cross_attention`) against SDPA over the float32 ones."""

from __future__ import annotations

import shutil

import pytest
import torch

from dsmcli.engine.transformer import CrossAttention
from dsmcli.kernels import decode_attention_op

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
    op = decode_attention_op()
    assert op is not None
    attention = _attention()
    generator = torch.Generator().manual_seed(1)
    source = torch.randn(3, 40, 64, generator=generator)
    x = torch.randn(3, 1, 64, generator=generator)
    with torch.no_grad():
        expected = attention(x, *attention.project_source(source))
        attention.native_decode = op
        keys, values = attention.project_source(source)
        assert keys.dtype == torch.float16 and keys.is_contiguous() and values.is_contiguous()
        native = attention(x, keys, values)
        again = attention(x, *attention.project_source(source))
    assert native.dtype == expected.dtype and native.shape == expected.shape
    # float16 keys and values: ~1e-3 relative to the output's peak (the quantized path's KV rings are float16 too)
    assert float((native - expected).abs().max()) <= 2e-3 * float(expected.abs().max())
    assert torch.equal(native, again)


def test_quantize_sets_and_clears_native_cross_attention():
    from torch import nn

    from dsmcli.engine.quantize import set_native_cross_attention

    model = nn.Sequential(_attention(), _attention(1))
    set_native_cross_attention(model, True)
    assert all(m.native_decode is decode_attention_op() for m in model)
    set_native_cross_attention(model, False)
    assert all(m.native_decode is None for m in model)
