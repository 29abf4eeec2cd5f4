"""The backbone's float32 linears on the native product (``dsmcli/kernels/fp32_linear.cpp`` through
:func:`dsmcli.nn.linear.linear`, chosen per stream by its kernel choice) against BLAS (``kernels="torch"``).

The tiny fixtures are too small for the product (weights under ``PRODUCT_MIN_WEIGHT_BYTES`` stay on BLAS), so these
tests widen the tiny-stt / tiny-tts architectures to 256 (every backbone linear then fits) with random weights.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from dsmcli.bench.models import random_lm
from dsmcli.engine import LM, ConditionInputs, EngineOptions, LMConfig, LMStream, SamplingOptions, TensorCondition
from dsmcli.hub.checkpoint import load_checkpoint
from dsmcli.kernels.linear import fp32_linear_op
from dsmcli.nn.linear import PRODUCT_MAX_ROWS, linear, product_fits

# relative to the peak text logit: the product sums in another order than BLAS (~1e-6 per product, measured
# ~3e-7 over the stack here)
LOGIT_RTOL = 1e-5
STEPS = 8

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the native kernels cannot be built")


def _wide_lm(repo: str, seed: int = 5) -> LM:
    kwargs = dict(load_checkpoint(repo).lm_kwargs)
    kwargs.update(dim=256, num_heads=4, text_card=512)
    return random_lm(LMConfig.from_dict(kwargs), torch.device("cpu"), torch.float32, seed)


def _condition(lm: LM, batch: int) -> ConditionInputs | None:
    if not lm.config.conditioners:
        return None
    generator = torch.Generator().manual_seed(3)
    values = {c.name: [c.possible_values[0]] * batch for c in lm.config.conditioners if c.possible_values}
    tensors = {c.name: TensorCondition.full(torch.randn(batch, 20, c.dim, generator=generator))
               for c in lm.config.conditioners if not c.possible_values}
    return ConditionInputs(values, tensors)


def _run(lm: LM, kernels: str, batch: int = 1, codes: torch.Tensor | None = None):
    """Text logits ``[steps, B, V]``, text tokens ``[steps, B]`` and the stream state of a greedy run."""
    stream = LMStream(lm, SamplingOptions.greedy(), engine=EngineOptions(kernels=kernels))
    state = stream.init_state(batch, _condition(lm, batch))
    logits, tokens = [], []
    for t in range(STEPS):
        out = stream.step(None if codes is None else codes[:batch, :, t], state)
        logits.append(out.text_logits)
        tokens.append(out.text_tokens)
    return torch.stack(logits), torch.stack(tokens), state


def _codes(lm: LM, batch: int) -> torch.Tensor | None:
    inputs = lm.config.n_q - lm.config.dep_q
    if inputs == 0:
        return None
    return torch.randint(0, lm.config.card, (batch, inputs, STEPS), generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("repo", ["dsm-test/tiny-stt", "dsm-test/tiny-tts"])
def test_native_product_matches_blas(repo, hf_cache):
    lm = _wide_lm(repo)
    codes = _codes(lm, 1)
    native_logits, native_tokens, native_state = _run(lm, "auto", codes=codes)
    blas_logits, blas_tokens, blas_state = _run(lm, "torch", codes=codes)
    assert native_state.backbone.product is fp32_linear_op("auto") is not None
    assert blas_state.backbone.product is None
    peak = float(blas_logits.abs().max())
    difference = float((native_logits - blas_logits).abs().max())
    assert 0 < difference <= LOGIT_RTOL * peak  # the product ran (other bits), and agrees
    assert torch.equal(native_tokens, blas_tokens)


def test_native_product_is_batch_invariant_and_deterministic(hf_cache):
    """A slot's logits do not depend on its batch mates (every op of the step is per row), bit for bit."""
    lm = _wide_lm("dsm-test/tiny-stt")
    codes = _codes(lm, 3)
    alone, _, _ = _run(lm, "auto", 1, codes)
    again, _, _ = _run(lm, "auto", 1, codes)
    batched, _, _ = _run(lm, "auto", 3, codes)
    assert torch.equal(alone, again)
    assert torch.equal(alone[:, 0], batched[:, 0])


def test_product_fits_only_streaming_float32_rows():
    op = fp32_linear_op("auto")
    weight = torch.randn(512, 256)  # 512 KB
    x = torch.randn(2, 1, 256)
    assert product_fits(x, weight, 2) and not product_fits(x, weight, PRODUCT_MAX_ROWS + 1)
    assert not product_fits(x, weight[:64], 2)  # 64 KB: stays in cache, BLAS
    assert not product_fits(x.double(), weight.double(), 2)
    many = torch.randn(PRODUCT_MAX_ROWS + 1, 256)
    assert torch.equal(linear(many, weight, product=op), linear(many, weight))  # BLAS: the product is not used
    out = linear(x, weight, product=op)
    assert out.shape == (2, 1, 512)
    assert torch.allclose(out, linear(x, weight), rtol=0, atol=1e-5 * float(out.abs().max()))


def test_compiled_step_keeps_blas(hf_cache):
    """``torch.compile`` traces the step itself: its backbone gets no native product."""
    lm = _wide_lm("dsm-test/tiny-stt")
    state = LMStream(lm, engine=EngineOptions(compile=True)).init_state(1)
    assert state.backbone.product is None
