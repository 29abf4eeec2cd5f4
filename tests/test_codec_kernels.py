"""The streaming conv formulations of ``dsmcli.codec.kernels`` against ``F.conv1d``, and the quantizer's exact
nearest-centroid arithmetic (one row, as a batch-1 streaming step quantizes) against ``torch.cdist``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsmcli.codec import kernels
from dsmcli.codec.config import QuantizerConfig
from dsmcli.codec.quantizer import ResidualVQ
from dsmcli.kernels import KernelChoice
from dsmcli.kernels.linear import fp32_linear_op
from dsmcli.nn.linear import PRODUCT_MAX_ROWS

AUTO, TORCH = KernelChoice.AUTO, KernelChoice.TORCH

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
    out = kernels.conv1d(x, weight, b, AUTO, stride, dilation)
    assert out.shape == expected.shape == (batch, out_channels, steps)
    assert (out - expected).abs().max() <= REL_TOL * expected.abs().max()


def test_conv1d_keeps_native_for_grouped_and_thin_inputs():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 20)
    grouped = torch.randn(8, 1, 4)
    assert torch.equal(kernels.conv1d(x, grouped, None, AUTO, 2, groups=8), F.conv1d(x, grouped, None, 2, groups=8))
    thin = torch.randn(4, 1, 7)  # one input channel: C * K < MIN_COLUMN_SIZE
    assert torch.equal(kernels.conv1d(x[:, :1], thin, None, AUTO), F.conv1d(x[:, :1], thin, None))


def _random_rvq(dim: int, bins: int, tie: tuple[int, int]) -> ResidualVQ:
    """4 levels of random centroids, level 0's ``tie[1]`` a copy of its ``tie[0]``; identity input projection."""
    config = QuantizerConfig(dimension=dim, n_q=4, bins=bins, input_dimension=dim, output_dimension=dim)
    rvq = ResidualVQ(config, num_levels=4)
    with torch.no_grad():
        for level in rvq.vq.layers:
            level._codebook.embedding_sum.normal_()
        first = rvq.vq.layers[0]._codebook.embedding_sum
        first[tie[1]] = first[tie[0]]
        rvq.input_proj.weight.copy_(torch.eye(dim)[:, :, None])
        rvq.refresh()
    return rvq


def test_quantizer_one_row_matches_cdist_including_exact_ties():
    torch.manual_seed(0)
    rvq = _random_rvq(16, 64, tie=(7, 40))
    with torch.no_grad():
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


needs_native = pytest.mark.skipif(fp32_linear_op(AUTO) is None, reason="the native fp32 kernel cannot be built here")
UNIT_ROUNDOFF = 2.0 ** -24


@needs_native
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 16])
@pytest.mark.parametrize("out_features,in_features", [(5, 258), (37, 512), (600, 1000), (2048, 258)])
@pytest.mark.parametrize("bias", [True, False])
def test_native_linear_within_float_rounding_of_exact(rows, out_features, in_features, bias):
    torch.manual_seed(rows * 1000 + out_features + in_features)
    x, weight = torch.randn(rows, in_features), torch.randn(out_features, in_features)
    b = torch.randn(out_features) if bias else None
    out = fp32_linear_op(AUTO)(x, weight, b)
    exact = x.double() @ weight.double().T + (0 if b is None else b.double())
    bound = in_features * UNIT_ROUNDOFF * (x.double().abs() @ weight.double().abs().T + 1)  # |sum| rounding bound
    assert out.shape == (rows, out_features)
    assert torch.all((out.double() - exact).abs() <= bound)


@needs_native
def test_native_linear_rows_do_not_depend_on_batch_mates():
    torch.manual_seed(1)
    weight, x = torch.randn(300, 520), torch.randn(1, 520)
    alone = fp32_linear_op(AUTO)(x, weight, None)
    for before, after in [(1, 0), (0, 3), (2, 5), (7, 8)]:
        batch = torch.cat([torch.randn(before, 520), x, torch.randn(after, 520)])
        assert torch.equal(fp32_linear_op(AUTO)(batch, weight, None)[before], alone[0])


@needs_native
def test_linear_uses_native_only_for_few_rows_and_large_weights():
    torch.manual_seed(2)
    large = torch.randn(1024, 512)  # 2 MB
    small = torch.randn(64, 512)  # 128 KB: stays on BLAS
    few, many = torch.randn(1, 2, 512), torch.randn(1, PRODUCT_MAX_ROWS + 1, 512)
    assert torch.equal(kernels.linear(few, large, None, AUTO), fp32_linear_op(AUTO)(few[0], large, None)[None])
    assert torch.equal(kernels.linear(many, large, None, AUTO), F.linear(many, large))
    assert torch.equal(kernels.linear(few, small, None, AUTO), F.linear(few, small))
    assert torch.equal(kernels.linear(few.double(), large.double(), None, AUTO), F.linear(few.double(), large.double()))
    tables = torch.randn(2, 1024, 258)
    assert kernels.rvq_encode(torch.randn(3, 256), tables, AUTO) is not None
    assert kernels.rvq_encode(torch.randn(PRODUCT_MAX_ROWS + 1, 256), tables, AUTO) is None
    assert kernels.rvq_encode(torch.randn(3, 256), tables[:, :64], AUTO) is None  # 66 KB tables: the torch loop
    # the torch choice (--kernels torch, DSM_NO_NATIVE_KERNELS=1, no compiler): F.linear and the torch loop
    assert torch.equal(kernels.linear(few, large, None, TORCH), F.linear(few, large))
    assert kernels.rvq_encode(torch.randn(3, 256), tables, TORCH) is None


@needs_native
def test_quantizer_with_native_distances_matches_cdist_away_from_rounding_ties():
    """Released sizes (256-d, 2048 bins: the native kernel computes the distance product). Codes equal
    ``torch.cdist``'s nearest centroid wherever its top-2 gap exceeds float rounding; identical centroids still
    resolve to the lower index."""
    torch.manual_seed(3)
    rvq = _random_rvq(256, 2048, tie=(11, 900))
    with torch.no_grad():
        latents = [rvq.centroids(0)[11][None, :, None] + 1e-3 * torch.randn(1, 256, 1) for _ in range(4)]
        latents += [torch.randn(1, 256, 1) for _ in range(28)]
        checked = 0
        for latent in latents:
            codes = rvq.encode(latent, 4)[0, :, 0].tolist()
            residual = latent[0, :, 0]
            for level, code in enumerate(codes):
                distances = torch.cdist(residual[None, None], rvq.centroids(level)[None])[0, 0]
                two = distances.topk(2, largest=False)
                if two.values[1] - two.values[0] > 1e-5 * residual.norm():
                    assert code == two.indices[0].item()
                    checked += 1
                residual = residual - rvq.centroids(level)[code]
            if latent is latents[0]:
                assert codes[0] == 11
        assert checked >= 120
        steps = torch.cat(latents[4:8], dim=-1)  # 4 rows in one call: each row's codes as when alone
        assert torch.equal(rvq.encode(steps, 4), torch.cat([rvq.encode(latent, 4) for latent in latents[4:8]], -1))


@needs_native
def test_screened_quantizer_gives_the_exact_kernels_codes_bit_for_bit():
    """The int8 screen only skips centroids that cannot win: its codes equal the all-float32 kernel's on
    exact ties, one-ulp near-ties, midpoints between centroids, zero and tiny or huge residuals, 1-16 rows."""
    torch.manual_seed(5)
    rvq = _random_rvq(256, 2048, tie=(11, 900))
    with torch.no_grad():
        table = rvq.vq.layers[1]._codebook.embedding_sum
        table[6] = table[5]
        table[6, 0] = torch.nextafter(table[5, 0], torch.tensor(float("inf")))  # a one-ulp neighbour
        rvq.refresh()
        tables = rvq.augmented_table
        screen = kernels.screen_tables(tables)
        centroids = [rvq.centroids(level) for level in range(4)]
        rows = [torch.zeros(256), centroids[0][11] + 1e-4 * torch.randn(256), centroids[1][5].clone()]
        rows += [(centroids[0][a] + centroids[0][b]) / 2 for a, b in torch.randint(0, 2048, (40, 2)).tolist()]
        rows += [(centroids[0][a] + centroids[0][b]) / 2 + centroids[1][5] for a, b in [(3, 4), (11, 12)]]
        rows += [scale * torch.randn(256) for scale in (1e-6, 1e-3, 0.03, 1.0, 100.0) for _ in range(6)]
        x = torch.stack(rows)
        for count in (1, 3, 16):
            for start in range(0, len(rows) - count + 1, count):
                chunk = x[start : start + count].contiguous()
                assert torch.equal(torch.ops.dsmcli_fp32.rvq_encode_screened(chunk, tables, *screen),
                                   torch.ops.dsmcli_fp32.rvq_encode(chunk, tables)), (count, start)
        # ResidualVQ.encode takes the screened kernel for a streaming step's rows
        latent = x[3:4].t()[None]  # [1, 256, 1]
        assert torch.equal(rvq.encode(latent, 4)[0, :, 0], torch.ops.dsmcli_fp32.rvq_encode(x[3:4], tables)[:, 0])
