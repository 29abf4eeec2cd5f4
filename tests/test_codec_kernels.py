"""The streaming conv formulations of ``dsmcli.codec.kernels`` against ``F.conv1d``, and the quantizer's exact
nearest-centroid arithmetic (one row, as a batch-1 streaming step quantizes) against ``torch.cdist``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsmcli.codec import kernels
from dsmcli.codec.config import QuantizerConfig
from dsmcli.codec.quantizer import ResidualVQ

REL_TOL = 1e-5  # another float summation order: relative to the largest output


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("steps", [1, kernels.ROWS_MAX_STEPS, kernels.ROWS_MAX_STEPS + 1, 96,
                                   kernels.COLUMNS_MAX_STEPS + 1])
@pytest.mark.parametrize("kernel,stride,dilation", [(3, 1, 1), (3, 1, 4), (8, 4, 1), (16, 8, 1), (1, 1, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv1d_equals_native(batch, steps, kernel, stride, dilation, bias):
    torch.manual_seed(steps * 100 + kernel * 10 + stride)
    channels, out_channels = 24, 20
    length = (steps - 1) * stride + (kernel - 1) * dilation + 1
    x = torch.randn(batch, channels, length)
    weight = torch.randn(out_channels, channels, kernel)
    b = torch.randn(out_channels) if bias else None
    expected = F.conv1d(x, weight, b, stride, dilation=dilation)
    out = kernels.conv1d(x, weight, b, stride, dilation)
    assert out.shape == expected.shape == (batch, out_channels, steps)
    assert (out - expected).abs().max() <= REL_TOL * expected.abs().max()


def test_conv1d_keeps_native_for_grouped_and_thin_inputs():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 20)
    grouped = torch.randn(8, 1, 4)
    assert torch.equal(kernels.conv1d(x, grouped, None, 2, groups=8), F.conv1d(x, grouped, None, 2, groups=8))
    thin = torch.randn(4, 1, 7)  # one input channel: C * K < MIN_COLUMN_SIZE
    assert torch.equal(kernels.conv1d(x[:, :1], thin, None), F.conv1d(x[:, :1], thin, None))


def test_quantizer_one_row_matches_cdist_including_exact_ties():
    torch.manual_seed(0)
    config = QuantizerConfig(dimension=16, n_q=4, bins=64, input_dimension=16, output_dimension=16)
    rvq = ResidualVQ(config, num_levels=4)
    with torch.no_grad():
        for level in rvq.vq.layers:
            level._codebook.embedding_sum.normal_()
        rvq.vq.layers[0]._codebook.embedding_sum[40] = rvq.vq.layers[0]._codebook.embedding_sum[7]  # a tie
        rvq.input_proj.weight.copy_(torch.eye(16)[:, :, None])
        rvq.refresh()
        first = rvq.centroids(0)
        latents = [first[7][None, :, None] + 1e-3 * torch.randn(1, 16, 1) for _ in range(8)]
        latents += [torch.randn(1, 16, 1) for _ in range(32)]
        for latent in latents:
            residual, expected = latent[0, :, 0], []
            for level in range(4):
                centroids = rvq.centroids(level)
                expected.append(torch.cdist(residual[None, None], centroids[None])[0, 0].argmin().item())
                residual = residual - centroids[expected[-1]]
            assert rvq.encode(latent, 4)[0, :, 0].tolist() == expected
        assert rvq.encode(latents[0], 1).item() == 7  # the lower index of the tied pair
