"""Independent batch slots: a batched stream equals separate batch-1 streams, slot by slot.

Schedule (global steps): slots start at 0, 3, 7 and 7; slot 1 pauses for steps 12..15; slot 2 is reset at
step 20 and restarts on new input (and, for the TTS model, a new voice and cfg value). Every output of a
slot is compared with a batch-1 run of the same inputs (greedy, near-tie rule on the batch-1 logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from test_lm_harness import (
    LOGIT_RTOL,
    assert_greedy_match,
    encode_speech,
    reference_checkpoint,
    relative_error,
    voice_inputs,
)

from dsmcli.engine import ConditionInputs, LMStream, SamplingOptions, StepHooks
from dsmcli.hub.loaders import load_lm

STEPS = 40
STARTS = (0, 3, 7, 7)
PAUSE = (1, range(12, 16))  # slot, global steps
RESET = (2, 20)  # slot, global step
SEGMENT_LEN = STEPS


@dataclass(frozen=True)
class Schedule:
    """Per global step: active mask [B], reset mask [B] and, per slot, (segment, local step)."""

    active: list[list[bool]]
    reset: list[list[bool]]
    where: list[list[tuple[int, int]]]


def make_schedule() -> Schedule:
    active, reset, where = [], [], []
    local = [0] * len(STARTS)
    segment = list(range(len(STARTS)))
    for step in range(STEPS):
        rst = [slot == RESET[0] and step == RESET[1] for slot in range(len(STARTS))]
        for slot, flag in enumerate(rst):
            if flag:
                local[slot], segment[slot] = 0, len(STARTS)
        act = [step >= STARTS[s] and not (s == PAUSE[0] and step in PAUSE[1]) for s in range(len(STARTS))]
        where.append([(segment[s], local[s]) for s in range(len(STARTS))])
        local = [n + int(a) for n, a in zip(local, act)]
        active.append(act)
        reset.append(rst)
    return Schedule(active, reset, where)


def run_batched(gen: LMStream, inputs, schedule: Schedule, condition=None, new_condition=None, on_reset=None):
    """Outputs per (segment, local step): (text token, text logits, frame, frame valid)."""
    state = gen.init_state(len(STARTS), condition)
    results = {}
    for step in range(STEPS):
        reset = torch.tensor(schedule.reset[step])
        if reset.any():
            state.reset(reset)
            if new_condition is not None:
                gen.set_condition(state, new_condition, reset)
            if on_reset is not None:
                on_reset(reset)
        codes = None if inputs is None else torch.stack([inputs(seg, j) for seg, j in schedule.where[step]])
        active = torch.tensor(schedule.active[step])
        out = gen.step(codes, state, active=active)
        for slot, (seg, j) in enumerate(schedule.where[step]):
            if schedule.active[step][slot]:
                results[seg, j] = (out.text_tokens[slot], out.text_logits[slot], out.frame[slot],
                                   out.frame_valid[slot])
    return results


def run_single(gen: LMStream, inputs, segment: int, steps: int, condition=None):
    state = gen.init_state(1, condition)
    results = {}
    for j in range(steps):
        codes = None if inputs is None else inputs(segment, j)[None]
        out = gen.step(codes, state)
        results[segment, j] = (out.text_tokens[0], out.text_logits[0], out.frame[0], out.frame_valid[0])
    return results


def compare(batched, single, what: str) -> None:
    keys = sorted(batched)
    assert keys == sorted(k for k in single if k in batched) and len(keys) > 100
    ours = torch.stack([batched[k][0] for k in keys])
    ref = torch.stack([single[k][0] for k in keys])
    logits = torch.stack([single[k][1] for k in keys])
    assert float(relative_error(torch.stack([batched[k][1] for k in keys]), logits).max()) <= LOGIT_RTOL
    assert_greedy_match(ours, ref, logits, what)
    for k in keys:
        assert bool(batched[k][3]) == bool(single[k][3]), k
        if bool(single[k][3]):
            assert torch.equal(batched[k][2], single[k][2]), (what, k)


def segment_lengths(schedule: Schedule) -> dict[int, int]:
    lengths: dict[int, int] = {}
    for row, act in zip(schedule.where, schedule.active):
        for (seg, j), a in zip(row, act):
            if a:
                lengths[seg] = max(lengths.get(seg, 0), j + 1)
    return lengths


def test_schedule_shape():
    schedule = make_schedule()
    lengths = segment_lengths(schedule)
    assert lengths == {0: 40, 1: 33, 2: 13, 3: 33, 4: 20}


def test_stt_slots_equal_separate_streams(tiny_stt, bria_24k):
    info = reference_checkpoint(tiny_stt)
    codes = encode_speech(info.get_mimi(device="cpu"), bria_24k(16.0))[0]  # [32, 200]
    lm = load_lm(tiny_stt, dtype=torch.float32)
    gen = LMStream(lm, SamplingOptions.greedy())

    def inputs(segment: int, j: int) -> torch.Tensor:
        return codes[:, segment * SEGMENT_LEN + j]

    schedule = make_schedule()
    batched = run_batched(gen, inputs, schedule)
    single = {}
    for seg, n in segment_lengths(schedule).items():
        single.update(run_single(gen, inputs, seg, n))
    compare(batched, single, "stt slots")


def test_tts_slots_equal_separate_streams(tiny_tts, tiny_voices):
    """Depformer, delays, cross-attention and per-slot conditions (voice + distilled cfg) in a batch."""
    from dsmcli.hub.files import hub_download

    lm = load_lm(tiny_tts, dtype=torch.float32)
    alice, bob = (hub_download(tiny_voices, f"voices/{n}.wav.1e68beda@240.safetensors") for n in ("alice", "bob"))
    per_slot = [voice_inputs([alice], 5, "2.0"), voice_inputs([bob], 5, "3.0"),
                voice_inputs([alice, bob], 5, "1.0"), voice_inputs([bob, alice], 5, None)]
    after_reset = voice_inputs([bob], 5, "4.0")
    generator = torch.Generator().manual_seed(5)
    scripts = torch.randint(0, lm.config.text_vocab_in * 4, (len(STARTS) + 1, STEPS), generator=generator)
    segment_of = {}

    def text_hook(tokens, info):
        return torch.stack([scripts[segment_of[b], int(info.offsets[b])] for b in range(tokens.shape[0])])

    def on_reset(mask):
        segment_of.update({b: len(STARTS) for b in mask.nonzero()[:, 0].tolist()})

    gen = LMStream(lm, SamplingOptions.greedy(), hooks=StepHooks(text_token=text_hook))
    schedule = make_schedule()
    segment_of.update({b: b for b in range(len(STARTS))})
    replacement = ConditionInputs.concat([after_reset] * len(STARTS))
    batched = run_batched(gen, None, schedule, ConditionInputs.concat(per_slot), replacement, on_reset)
    single = {}
    for seg, n in segment_lengths(schedule).items():
        segment_of.clear()
        segment_of[0] = seg
        condition = after_reset if seg == len(STARTS) else per_slot[seg]
        single.update(run_single(gen, None, seg, n, condition))
    compare(batched, single, "tts slots")
