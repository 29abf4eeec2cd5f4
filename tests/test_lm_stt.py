"""STT parity: our LM + step engine vs the reference ``LMGen`` on the tiny STT fixtures, fp32, real speech codes.

Codes come from real speech (bria.mp3) encoded with the fixture's reference Mimi. The context of the tiny
models (40 steps) is far shorter than the run, so the ring KV cache wraps many times.
"""

from __future__ import annotations

import pytest
import torch
from test_lm_harness import (
    BF16_LOGIT_RTOL,
    LOGIT_RTOL,
    PROB_ATOL,
    assert_free_run_equal,
    assert_greedy_match,
    encode_speech,
    reference_checkpoint,
    relative_error,
    run_our_stt,
    run_ref_stt,
)

from dsmcli.engine import EngineOptions
from dsmcli.hub.loaders import load_lm

SECONDS = 17.0  # 212 steps of 80 ms


@pytest.fixture(scope="module", params=["tiny_stt", "tiny_stt_prefix"])
def stt_case(request, bria_24k):
    """(repo id, reference LM fp32, our LM fp32, codes [1, 32, T], reference greedy run)."""
    repo = request.getfixturevalue(request.param)
    info = reference_checkpoint(repo)
    ref_lm = info.get_moshi(device="cpu", dtype=torch.float32)
    codes = encode_speech(info.get_mimi(device="cpu"), bria_24k(SECONDS))
    ours = load_lm(repo, dtype=torch.float32)
    return repo, ref_lm, ours, codes, run_ref_stt(ref_lm, codes)


def test_codes_are_long_real_speech(stt_case):
    _, _, ours, codes, ref = stt_case
    assert codes.shape[-1] >= 200 > ours.config.transformer.context
    assert codes.unique().numel() > 16  # real codes, not a constant
    tokens = set(ref.tokens.tolist())
    assert {ours.config.text_pad_id, ours.config.end_of_padding_id} <= tokens and len(tokens) > 5


def test_teacher_forced_logits_and_extra_heads(stt_case):
    repo, _, ours, codes, ref = stt_case
    run = run_our_stt(ours, codes, forced=ref.tokens)
    rel = relative_error(run.logits, ref.logits)
    assert float(rel.max()) <= LOGIT_RTOL, f"{repo}: text logits off by {float(rel.max()):.2e} (relative)"
    if ref.extra is not None:
        assert run.extra is not None and run.extra.shape == ref.extra.shape == (codes.shape[-1], 4, 6)
        assert float((run.extra - ref.extra).abs().max()) <= PROB_ATOL
    else:
        assert run.extra is None
    ties = assert_greedy_match(run.logits.argmax(-1), ref.logits.argmax(-1), ref.logits, repo)
    assert ties < codes.shape[-1] // 10


def test_free_running_greedy_equals_reference(stt_case):
    repo, _, ours, codes, ref = stt_case
    run = run_our_stt(ours, codes)
    assert_free_run_equal(run.tokens, ref.tokens, ref.logits, repo)


def test_bfloat16_close_to_reference(tiny_stt, bria_24k):
    """Default dtype (bf16, as released). With static shapes our step does the reference's ops (whole-ring
    attention), so the logits agree to rounding; by default a fresh stream attends over the ring cells written so
    far, which changes the softmax's summation order: a few bf16 ulps, and the same greedy text."""
    info = reference_checkpoint(tiny_stt)
    codes = encode_speech(info.get_mimi(device="cpu"), bria_24k(8.0))
    ref = run_ref_stt(info.get_moshi(device="cpu", dtype=torch.bfloat16), codes)
    ours = load_lm(tiny_stt)
    assert ours.dtype == torch.bfloat16
    static = run_our_stt(ours, codes, forced=ref.tokens, engine=EngineOptions(static_shapes=True))
    assert float(relative_error(static.logits, ref.logits).max()) <= 1e-2
    run = run_our_stt(ours, codes, forced=ref.tokens)
    assert float(relative_error(run.logits, ref.logits).max()) <= BF16_LOGIT_RTOL
    assert_free_run_equal(run_our_stt(ours, codes).tokens, ref.tokens, ref.logits, "bf16")
