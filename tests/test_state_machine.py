"""The text-stream state machine against the reference ``StateMachine.process`` on random token sequences."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import pytest
import torch

os.environ.setdefault("NO_TORCH_COMPILE", "1")

ref_tts = pytest.importorskip("moshi.models.tts")

from dsmcli.tts.script import Entry  # noqa: E402
from dsmcli.tts.state_machine import (  # noqa: E402
    SlotState,
    TextStreamBatch,
    TextStreamConfig,
    TextStreamMachine,
)
from dsmcli.tts.tokens import TtsTokenIds  # noqa: E402
from dsmcli.hub.task_config import TtsConfig

TEXT_CARD = 8000
IDS = TtsTokenIds.for_text_card(TEXT_CARD)
TAIL = 20  # steps run past end_step, like delay_steps + final_padding


def random_entries(rng: random.Random, n_words: int, with_breaks: bool, with_unk: bool) -> list[Entry]:
    entries = []
    for index in range(n_words):
        if with_breaks and rng.random() < 0.2:
            entries.append(Entry(tokens=(), text="", padding=rng.randint(0, 12)))
        tokens = [rng.randint(4, TEXT_CARD - 1) for _ in range(rng.randint(1, 4))]
        if with_unk and rng.random() < 0.15:
            tokens[rng.randrange(len(tokens))] = IDS.new_word  # SentencePiece <unk> = 0 = new_word
        if index == 0 or rng.random() < 0.1:
            tokens.insert(0, rng.choice([IDS.main, IDS.other]))
        padding = rng.choice([0, 0, len(tokens), len(tokens) + 1])
        entries.append(Entry(tokens=tuple(tokens), text=f"w{index}", padding=padding))
    if with_breaks:
        entries.append(Entry(tokens=(), text="", padding=rng.randint(1, 5)))
    return entries


def random_tokens(rng: random.Random, length: int) -> list[int]:
    """Model outputs: NEW_WORD / PAD / anything else, with a per-sequence bias."""
    p_word = rng.choice([0.05, 0.2, 0.5, 0.9])
    p_other = rng.choice([0.0, 0.1, 0.3])
    out = []
    for _ in range(length):
        r = rng.random()
        if r < p_other:
            out.append(rng.choice([1, 2, 4, 77, TEXT_CARD - 1]))
        elif r < p_other + (1 - p_other) * p_word:
            out.append(IDS.new_word)
        else:
            out.append(IDS.pad)
    return out


@dataclass
class Trace:
    outputs: list[int]
    consumption_times: list[int]
    end_step: int | None
    transcript: list[tuple[str, int]]


def run_reference(config: TextStreamConfig, entries, tokens, prefix_steps=0) -> Trace:
    machine = ref_tts.StateMachine(ref_tts.TokenIds(IDS.card), second_stream_ahead=config.second_stream_ahead,
                                   max_padding=config.max_padding, initial_padding=config.initial_padding)
    state = machine.new_state([ref_tts.Entry(list(e.tokens), e.text, e.padding) for e in entries])
    outputs = []
    for offset, token in enumerate(tokens):
        if offset < prefix_steps:
            outputs.append(IDS.zero)  # TTSModel.generate: text prefix popped, machine not called
        else:
            outputs.append(machine.process(offset, state, token)[0])
        if state.end_step is not None and offset + 1 >= state.end_step + TAIL:
            break
    return Trace(outputs, state.consumption_times, state.end_step, state.transcript)


def _trace(slot: SlotState, outputs: list[int]) -> Trace:
    return Trace(outputs, slot.consumption_times, slot.end_step, [(w.text, w.step) for w in slot.transcript])


def run_ours(config: TextStreamConfig, entries, tokens, prefix_steps=0) -> Trace:
    machine = TextStreamMachine(config)
    slot = machine.new_slot(entries, prefix_steps=prefix_steps)
    outputs = []
    for token in tokens:
        assert machine.can_step(slot)  # whole text known: always ready
        outputs.append(machine.process(slot, token))
        if machine.is_finished(slot, TAIL):
            break
    return _trace(slot, outputs)


CONFIGS = [
    TextStreamConfig(IDS, second_stream_ahead=0),
    TextStreamConfig(IDS, second_stream_ahead=2),
    TextStreamConfig(IDS, second_stream_ahead=1, max_padding=6),
    TextStreamConfig(IDS, second_stream_ahead=2, max_padding=3, initial_padding=0),
]


def _cases(n_cases: int, seed: int):
    rng = random.Random(seed)
    for case in range(n_cases):
        entries = random_entries(rng, rng.randint(0, 12), with_breaks=case % 2 == 1, with_unk=case % 3 == 2)
        yield entries, random_tokens(rng, 400)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"ahead{c.second_stream_ahead}-max{c.max_padding}")
def test_matches_reference_on_random_sequences(config):
    ended = 0
    for entries, tokens in _cases(60, seed=config.second_stream_ahead * 10 + config.max_padding):
        ref = run_reference(config, entries, tokens)
        ours = run_ours(config, entries, tokens)
        assert ours == ref
        ended += ref.end_step is not None
    assert ended >= 50  # most sequences run to the end of their text


@pytest.mark.parametrize("second_stream_ahead", [0, 2])
def test_text_prefix_steps_match_reference(second_stream_ahead):
    config = TextStreamConfig(IDS, second_stream_ahead=second_stream_ahead)
    for prefix in (1, 7, 30):
        for entries, tokens in _cases(10, seed=prefix):
            ours = run_ours(config, entries, tokens, prefix_steps=prefix)
            assert ours == run_reference(config, entries, tokens, prefix_steps=prefix)
            assert ours.outputs[:prefix] == [IDS.zero] * prefix


def test_known_sequence_by_hand():
    """Two words and a break, lookahead 2: the values of FORMAT.md §6.3 written out."""
    config = TextStreamConfig(IDS, second_stream_ahead=2)
    entries = [Entry((IDS.main, 10), "a", 2), Entry((11,), "b", 1), Entry((), "", 1), Entry((12, 13), "c", 2)]
    machine = TextStreamMachine(config)
    slot = machine.new_slot(entries)
    pad, word = IDS.pad, IDS.new_word
    outs = [machine.process(slot, tok) for tok in [word, pad, word, pad, pad, word, pad, word, word, pad, pad, word]]
    mux = IDS.mux
    assert outs == [
        mux(pad), mux(pad),  # initial padding: forced PAD, the model's WORD is ignored
        mux(IDS.main, word),  # word "a": NEW_WORD on the second stream, its first token on the main one
        mux(10, 12), mux(pad, 13),  # rest of "a"; lookahead stream carries "c" (2 words ahead)
        mux(11, word),  # word "b"
        mux(pad),  # forced padding of "b"
        mux(pad),  # the break: consumed as a PAD
        mux(12, word), mux(13), mux(pad),  # word "c" (its lookahead is empty)
        mux(pad, word),  # end of text: NEW_WORD once more on the second stream
    ]
    assert slot.consumption_times == [2, 5, 7, 8]
    assert [(w.text, w.step) for w in slot.transcript] == [("a", 2), ("b", 5), ("c", 8)]
    assert slot.end_step == 11
    assert machine.process(slot, word) == mux(pad)  # only once


@pytest.mark.parametrize("second_stream_ahead", [0, 2])
def test_streaming_entries_give_the_same_tokens(second_stream_ahead):
    """Entries appended one by one (the engine steps only when `ready`) = the whole list at once."""
    config = TextStreamConfig(IDS, second_stream_ahead=second_stream_ahead)
    machine = TextStreamMachine(config)
    rng = random.Random(5)
    stalls = 0
    for entries, tokens in _cases(40, seed=100 + second_stream_ahead):
        whole = run_ours(config, entries, tokens)
        slot = machine.new_slot(text_closed=False)
        pending = list(entries)
        outputs = []
        while len(outputs) < len(whole.outputs):
            if not machine.can_step(slot):
                stalls += 1
                if pending:
                    slot.entries.append(pending.pop(0))
                else:
                    slot.text_closed = True
                continue
            outputs.append(machine.process(slot, tokens[len(outputs)]))
            if pending and rng.random() < 0.3:  # text sometimes arrives ahead of need
                slot.entries.append(pending.pop(0))
        assert _trace(slot, outputs) == whole
    assert stalls > 50


def test_streaming_script_rule_differs_with_breaks():
    """The reference streaming script steps while len(entries) > ahead, counting breaks: not always enough."""
    config = TextStreamConfig(IDS, second_stream_ahead=2)
    machine = TextStreamMachine(config)
    slot = machine.new_slot([Entry((5,), "a"), Entry((), "", 3), Entry((6,), "b")], text_closed=False)
    slot.forced_padding = 0
    assert len(slot.entries) > config.second_stream_ahead and not machine.can_step(slot)
    slot.entries.append(Entry((7,), "c"))
    assert machine.can_step(slot)


def test_batch_slots_are_independent():
    config = TextStreamConfig(IDS, second_stream_ahead=2)
    machine = TextStreamMachine(config)
    cases = list(_cases(3, seed=7))
    batch = TextStreamBatch.create(machine, 3)
    assert not batch.ready().any()  # idle slots wait for text
    for index, (entries, _) in enumerate(cases):
        batch.reset(index, entries)
    refs = [run_reference(config, entries, tokens) for entries, tokens in cases]
    outs: list[list[int]] = [[], [], []]
    late_start = 5  # slot 2 starts 5 steps late: its step counter is its own
    for step in range(400):
        active = torch.tensor([True, True, step >= late_start]) & ~batch.finished(TAIL)
        if not active.any():
            break
        tokens = torch.tensor([[cases[i][1][len(outs[i])] if active[i] else 99] for i in range(3)])
        values = batch.process(tokens, active)
        assert values.shape == tokens.shape and values.dtype == tokens.dtype
        for i in range(3):
            if active[i]:
                outs[i].append(int(values[i, 0]))
            else:
                assert int(values[i, 0]) == IDS.zero
    for i in range(3):
        assert _trace(batch.slots[i], outs[i]) == refs[i]
    batch.reset(1, cases[0][0])
    assert batch.slots[1].step == 0 and batch.slots[1].transcript == []
    assert batch.slots[0].step > 0
    batch.release(0)
    assert batch.ready().tolist() == [False, True, True]


def test_batch_streaming_api():
    machine = TextStreamMachine(TextStreamConfig(IDS, second_stream_ahead=1, initial_padding=0))
    batch = TextStreamBatch.create(machine, 2)
    batch.reset(0, [Entry((5,), "a")], text_closed=False)
    batch.reset(1, [Entry((5,), "a")])
    assert batch.ready().tolist() == [False, True]
    batch.append_entries(0, [Entry((6,), "b")])
    assert batch.ready().tolist() == [True, True]
    batch.close_text(0)
    with pytest.raises(ValueError, match="closed"):
        batch.append_entries(0, [Entry((7,), "c")])
    with pytest.raises(ValueError, match="expected 2"):
        batch.process(torch.tensor([0, 0, 0]))


def test_config_from_checkpoint_values():
    ids = TtsTokenIds.for_text_card(8000, pad=3)
    assert (ids.card, ids.new_word, ids.pad, ids.main, ids.other, ids.zero, ids.ungenerated) == (
        8001, 0, 3, 1, 2, -1, -2)
    tts = TtsConfig.from_dict({"audio_delay": 1.28, "second_stream_ahead": 2})
    config = TextStreamConfig(ids, tts.second_stream_ahead)
    assert (config.second_stream_ahead, config.max_padding, config.initial_padding) == (2, 8, 2)
    assert ids.demux(ids.mux(17, 4)) == (17, 4) and ids.demux(ids.mux(3)) == (3, -1)
    with pytest.raises(ValueError):
        TtsTokenIds(card=3)
