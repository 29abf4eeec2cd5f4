"""Real-size STT layout (stt-1b-en_fr shapes, random weights), ours vs the reference, teacher-forced in fp32.

One set of weights (~4 GB fp32) is shared: our model is assigned the reference module's tensors (no copy).
The weights are drawn directly (normal, std 1/sqrt(fan-in); norm gains uniform in [0.6, 1.4]) on a module built
on the meta device: the reference's own initialiser takes minutes at this size.
"""

from __future__ import annotations

import pytest
import torch
from test_lm_config import STT_1B
from test_lm_harness import LOGIT_RTOL, PROB_ATOL, assert_greedy_match, relative_error, run_our_stt, run_ref_stt

from dsmcli.engine import LM, LMConfig

STEPS = 20


def _random_reference(lm_kwargs: dict, seed: int) -> torch.nn.Module:
    from moshi.models import loaders

    model = loaders.get_moshi_lm(None, lm_kwargs=dict(lm_kwargs), device="meta", dtype=torch.float32)
    model = model.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("alpha"):
                param.uniform_(0.6, 1.4, generator=generator)
            else:
                param.normal_(0.0, param.shape[-1] ** -0.5, generator=generator)
    return model


@pytest.mark.slow
def test_stt_1b_shapes_teacher_forced():
    ref_lm = _random_reference(STT_1B, seed=7)
    ours = LM.from_state(LMConfig.from_dict(STT_1B), dict(ref_lm.state_dict()), dtype=torch.float32)
    assert ours.text_linear.weight.data_ptr() == ref_lm.text_linear.weight.data_ptr()  # shared, not copied
    codes = torch.randint(0, 2048, (1, 32, STEPS), generator=torch.Generator().manual_seed(8))
    ref = run_ref_stt(ref_lm, codes)
    run = run_our_stt(ours, codes, forced=ref.tokens)
    rel = relative_error(run.logits, ref.logits)
    assert float(rel.max()) <= LOGIT_RTOL, f"text logits off by {float(rel.max()):.2e} (relative)"
    assert run.extra.shape == (STEPS, 4, 6)
    assert float((run.extra - ref.extra).abs().max()) <= PROB_ATOL
    assert_greedy_match(run.logits.argmax(-1), ref.tokens, ref.logits, "stt-1b shapes")
