"""Codec building blocks against the reference modules: streaming == one-shot, and both == reference."""

from __future__ import annotations

import itertools

import pytest
import torch

from dsmcli.codec.config import MimiConfig, PadMode, QuantizerConfig
from dsmcli.codec.conv import CausalConv1d, CausalConvTranspose1d
from dsmcli.codec.checkpoint import released_names
from dsmcli.codec.quantizer import SplitQuantizer
from dsmcli.codec.transformer import MimiTransformer

TOL = 1e-5
CONV_CASES = [(k, s) for k, s in itertools.product([1, 3, 4, 8, 16], [1, 2, 4, 8]) if s <= k]


def _copy_weights(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    ours.load_state_dict(released_names(ref.state_dict()))


def _chunks(x: torch.Tensor, unit: int, sizes=(1, 2, 1)) -> list[torch.Tensor]:
    """Split ``x`` along time into pieces of ``size * unit`` samples, cycling through ``sizes``."""
    pieces, start = [], 0
    for size in itertools.cycle(sizes):
        if start >= x.shape[-1]:
            return pieces
        pieces.append(x[..., start : start + size * unit])
        start += size * unit


@pytest.mark.parametrize("kernel,stride", CONV_CASES)
@pytest.mark.parametrize("pad_mode", list(PadMode))
def test_conv_streaming_and_one_shot_match_reference(kernel, stride, pad_mode):
    from moshi.modules.conv import StreamingConv1d

    torch.manual_seed(kernel * 10 + stride)
    dilation = 2 if stride == 1 and kernel > 1 else 1
    ref = StreamingConv1d(3, 5, kernel, stride, dilation=dilation, causal=True, pad_mode=pad_mode.value)
    ours = CausalConv1d(3, 5, kernel, stride, dilation=dilation, pad_mode=pad_mode)
    _copy_weights(ours, ref)
    # The reference's replicate mode wants every chunk at least as long as the left context.
    unit = stride * max(1, -(-ours.context // stride) if pad_mode is PadMode.REPLICATE else 1)
    x = torch.randn(2, 3, 12 * unit)
    with torch.no_grad():
        expected = ref(x)
        assert (ours(x) - expected).abs().max() <= TOL
        with ref.streaming(2):
            ref_chunks = torch.cat([ref(c) for c in _chunks(x, unit)], dim=-1)
    state = ours.init_state(2)
    with torch.no_grad():
        ours_chunks = torch.cat([ours.step(c, state) for c in _chunks(x, unit)], dim=-1)
    assert (ours_chunks - ref_chunks).abs().max() <= TOL
    assert (ours_chunks - expected).abs().max() <= TOL


@pytest.mark.parametrize("kernel,stride", CONV_CASES)
def test_conv_transpose_streaming_and_one_shot_match_reference(kernel, stride):
    from moshi.modules.conv import StreamingConvTranspose1d

    torch.manual_seed(kernel * 10 + stride)
    ref = StreamingConvTranspose1d(4, 3, kernel, stride, causal=True)
    ours = CausalConvTranspose1d(4, 3, kernel, stride)
    _copy_weights(ours, ref)
    x = torch.randn(2, 4, 20)
    with torch.no_grad():
        expected = ref(x)
        assert expected.shape[-1] == 20 * stride
        assert (ours(x) - expected).abs().max() <= TOL
        with ref.streaming(2):
            ref_chunks = torch.cat([ref(c) for c in _chunks(x, 1)], dim=-1)
    state = ours.init_state(2)
    with torch.no_grad():
        ours_chunks = torch.cat([ours.step(c, state) for c in _chunks(x, 1)], dim=-1)
    assert (ours_chunks - ref_chunks).abs().max() <= TOL
    assert (ours_chunks - expected).abs().max() <= TOL


def _ref_transformer(config: dict):
    from moshi.modules.transformer import LayerScale, ProjectedTransformer

    torch.manual_seed(0)
    ref = ProjectedTransformer(**config).eval()
    with torch.no_grad():
        for module in ref.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
            elif isinstance(module, LayerScale):
                module.scale.uniform_(0.2, 0.5)
    return ref


@pytest.mark.parametrize("steps_per_call", [1, 2, 3])
def test_transformer_matches_reference_offline_and_streaming_past_the_ring(steps_per_call):
    from moshi.models.loaders import _transformer_kwargs

    raw = dict(_transformer_kwargs, d_model=32, num_heads=4, num_layers=2, dim_feedforward=48, context=10,
               input_dimension=32, output_dimensions=[32])
    ref = _ref_transformer(raw)
    ours = MimiTransformer(MimiConfig.from_dict({"transformer": raw, "seanet": {"dimension": 32},
                                                 "quantizer": {"input_dimension": 32, "output_dimension": 32}
                                                 }).transformer)
    _copy_weights(ours, ref)
    x = torch.randn(2, 32, 36)
    with torch.no_grad():
        (expected,) = ref(x)
        assert (ours(x) - expected).abs().max() <= TOL
        with ref.streaming(2):
            ref_stream = torch.cat([ref(c)[0] for c in x.split(steps_per_call, dim=-1)], dim=-1)
        state = ours.init_state(2)
        ours_stream = torch.cat([ours.step(c, state) for c in x.split(steps_per_call, dim=-1)], dim=-1)
    assert (ours_stream - ref_stream).abs().max() <= TOL
    departs = (ref_stream - expected).abs().amax(dim=(0, 1)) > TOL
    assert departs.any() == (steps_per_call > 1), "multi-step calls lose keys once the ring wraps"


def test_quantizer_matches_reference_for_every_codebook_count():
    from moshi.quantization import SplitResidualVectorQuantizer

    torch.manual_seed(0)
    config = QuantizerConfig(dimension=8, n_q=6, bins=32, input_dimension=16, output_dimension=16)
    ref = SplitResidualVectorQuantizer(dimension=8, n_q=6, bins=32, input_dimension=16, output_dimension=16).eval()
    with torch.no_grad():
        for vq in [*ref.rvq_first.vq.layers, *ref.rvq_rest.vq.layers]:
            vq._codebook.embedding_sum.normal_()
            vq._codebook.cluster_usage.uniform_(0.5, 2.0)
            vq._codebook._embedding = None
    ours = SplitQuantizer(config)
    ours.load_state_dict(ref.state_dict())  # the post-load hook rebuilds the centroid tables
    latent = torch.randn(3, 16, 11)
    for k in range(1, 7):
        ref.set_num_codebooks(k)
        with torch.no_grad():
            codes = ref.encode(latent)
            assert torch.equal(ours.encode(latent, k), codes)
            assert (ours.decode(codes) - ref.decode(codes)).abs().max() <= TOL
