"""Step-engine semantics of FORMAT.md §3.7 on the tiny fixtures (no reference needed): initial tokens, frame
alignment with delays, inactive slots, and argument errors."""

from __future__ import annotations

import pytest
import torch

from dsmcli.engine import LM, ConditionInputs, LMStream, SamplingOptions, StepHooks, TensorCondition
from dsmcli.hub.loaders import load_lm


@pytest.fixture(scope="module")
def stt_lm(tiny_stt):
    return load_lm(tiny_stt, dtype=torch.float32)


@pytest.fixture(scope="module")
def tts_lm(tiny_tts):
    return load_lm(tiny_tts, dtype=torch.float32)


def _tts_condition(lm: LM, batch: int) -> ConditionInputs:
    dim = lm.config.conditioner("speaker_wavs").dim
    voice = torch.randn(batch, 20, dim, generator=torch.Generator().manual_seed(0))
    return ConditionInputs({"control": ["ok"] * batch, "cfg": ["2.0"] * batch},
                           {"speaker_wavs": TensorCondition.full(voice)})


def _codes(steps: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 64, (steps, 1, 32), generator=torch.Generator().manual_seed(seed))


def test_codes_given_at_step_zero_are_never_seen(stt_lm):
    gen = LMStream(stt_lm, SamplingOptions.greedy())
    codes = _codes(12, 1)
    runs = []
    for first in (codes[0], torch.zeros_like(codes[0])):
        state = gen.init_state(1)
        outs = [gen.step(first, state)] + [gen.step(c, state) for c in codes[1:]]
        runs.append(torch.stack([o.text_logits for o in outs]))
    assert torch.equal(runs[0], runs[1])


def test_frames_undo_the_delays(tts_lm):
    """Frame of step s (valid once s >= max_delay) = [text of step s-2, audio of stream k sampled at step
    s - 2 + delay_k]: the acoustic codebooks (delay 2) are generated two steps after the semantic one."""
    generator = torch.Generator().manual_seed(3)
    script = torch.randint(0, tts_lm.config.text_vocab_in, (30,), generator=generator)
    gen = LMStream(tts_lm, SamplingOptions.greedy(), hooks=StepHooks(text_token=lambda t, i: script[i.offsets]))
    state = gen.init_state(1, _tts_condition(tts_lm, 1))
    outs = [gen.step(None, state) for _ in range(30)]
    max_delay = tts_lm.config.max_delay
    assert [bool(o.frame_valid[0]) for o in outs] == [s >= max_delay for s in range(30)]
    assert all((o.frame == -2).all() for o in outs[:max_delay])
    delays = tts_lm.config.delays
    for s in range(max_delay, 30):
        t = s - max_delay
        frame = outs[s].frame[0]
        assert int(frame[0]) == int(outs[t].text_tokens[0]) == int(script[t])
        for k in range(1, len(delays)):
            assert int(frame[k]) == int(outs[t + delays[k]].audio_tokens[0, k - 1]), (s, k)


def test_inactive_slots_keep_their_whole_state(tts_lm):
    gen = LMStream(tts_lm, SamplingOptions(temp=0.8, text_temp=0.7, top_k=20, text_top_k=5),
                   generator=torch.Generator().manual_seed(4))
    state = gen.init_state(2, _tts_condition(tts_lm, 2))
    for _ in range(5):
        gen.step(None, state)
    rings = state.backbone.rings
    ring = slice(0, rings.capacity)  # the last cell is scratch space for slots that do not advance
    before = (state.tokens.clone(), state.offsets.clone(), torch.stack(rings.keys), torch.stack(rings.values),
              rings.positions.clone())
    gen.step(None, state, active=torch.tensor([True, False]))
    assert torch.equal(state.tokens[1], before[0][1]) and not torch.equal(state.tokens[0], before[0][0])
    assert state.offsets.tolist() == [before[1][0] + 1, before[1][1]]
    keys, values = torch.stack(rings.keys), torch.stack(rings.values)  # [L, B, H, C + 1, D]
    assert torch.equal(keys[:, 1, :, ring], before[2][:, 1, :, ring])
    assert torch.equal(values[:, 1, :, ring], before[3][:, 1, :, ring])
    assert torch.equal(rings.positions[1, ring], before[4][1, ring])
    assert int(rings.positions[0, ring].max()) == int(before[4][0, ring].max()) + 1
    assert not torch.equal(keys[:, 0], before[2][:, 0])


def test_argument_errors(stt_lm, tts_lm):
    gen = LMStream(stt_lm, SamplingOptions.greedy())
    state = gen.init_state(2)
    with pytest.raises(ValueError, match="audio codes"):
        gen.step(torch.zeros(2, 31, 1, dtype=torch.long), state)
    with pytest.raises(ValueError, match="takes no conditions"):
        gen.init_state(1, _tts_condition(tts_lm, 1))
    with pytest.raises(ValueError, match="num_generated"):
        LMStream(tts_lm, num_generated=9)
    tts_gen = LMStream(tts_lm, SamplingOptions.greedy())
    with pytest.raises(ValueError, match="needs conditions"):
        tts_gen.init_state(1)
    with pytest.raises(ValueError, match="2 slots"):
        tts_gen.init_state(1, _tts_condition(tts_lm, 2))
    bad = ConditionInputs({"control": ["ok"], "cfg": ["9.5"]}, _tts_condition(tts_lm, 1).tensors)
    with pytest.raises(ValueError, match="9.5"):
        tts_gen.init_state(1, bad)
