"""Sampling: greedy ties, top-k, seeded generators, equality with the reference sampler, options, CFG mixing."""

from __future__ import annotations

import pytest
import torch

from dsmcli.engine import SamplingOptions, cfg_mix, sample_token


def test_greedy_takes_the_first_maximum():
    logits = torch.tensor([[0.0, 5.0, 5.0, 1.0], [7.0, 7.0, 7.0, 7.0]])
    assert sample_token(logits, temp=0.0).tolist() == [1, 0]
    assert sample_token(logits, temp=0.0, top_k=3).tolist() == [1, 0]


def test_top_k_restricts_the_candidates():
    logits = torch.tensor([1.0, 4.0, 3.5, 0.0, 3.9, -1.0]).expand(2000, -1)
    draws = sample_token(logits, temp=1.0, top_k=3, generator=torch.Generator().manual_seed(0))
    assert set(draws.unique().tolist()) == {1, 2, 4}
    assert sample_token(logits[:5], temp=5.0, top_k=1).tolist() == [1] * 5


def test_frequencies_follow_the_tempered_softmax():
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0])
    n = 40_000
    draws = sample_token(logits.expand(n, -1), temp=2.0, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(draws, minlength=4).float() / n
    assert torch.allclose(freq, torch.softmax(logits / 2.0, dim=-1), atol=0.01)


def test_seeded_generator_is_reproducible():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    a = sample_token(logits, 0.7, 25, torch.Generator().manual_seed(3))
    b = sample_token(logits, 0.7, 25, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (3,)


@pytest.mark.parametrize("temp, top_k", [(0.7, 25), (0.6, 250), (1.0, 0), (0.0, 50)])
def test_draws_equal_the_reference_sampler_for_the_same_rng_state(temp, top_k):
    from moshi.utils.sampling import sample_token as ref_sample

    logits = torch.randn(4, 1, 300, generator=torch.Generator().manual_seed(4))
    for seed in range(5):
        torch.manual_seed(seed)
        ref = ref_sample(logits, use_sampling=True, temp=temp, top_k=top_k)
        torch.manual_seed(seed)
        assert torch.equal(sample_token(logits, temp, top_k), ref)


def test_options_are_validated():
    assert SamplingOptions.greedy().temp == 0 and not SamplingOptions().uses_cfg
    assert SamplingOptions(cfg_coef=2.0).uses_cfg
    for bad in ({"temp": -0.1}, {"text_temp": float("nan")}, {"top_k": -1}, {"text_top_k": 2.5},
                {"cfg_coef": 0.0}, {"cfg_coef": float("inf")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingOptions(**bad)


def test_cfg_mix():
    cond, null = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0])
    assert torch.equal(cfg_mix(cond, null, 1.0), cond)
    assert torch.equal(cfg_mix(cond, null, 2.0), torch.tensor([0.0, 5.0]))
