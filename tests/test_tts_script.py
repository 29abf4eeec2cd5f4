"""Script → entries: parity with the reference ``script_to_entries``, streaming text, dialog parsing."""

from __future__ import annotations

import io
import os
import random

import pytest

os.environ.setdefault("NO_TORCH_COMPILE", "1")

sentencepiece = pytest.importorskip("sentencepiece")
ref_tts = pytest.importorskip("moshi.models.tts")

from dsmcli.constants import FRAME_RATE  # noqa: E402
from dsmcli.errors import InputError  # noqa: E402
from dsmcli.tts.dialog import MONOLOGUE_SPEAKER, parse_dialog  # noqa: E402
from dsmcli.tts.script import Entry, EntryStream, script_to_entries  # noqa: E402
from dsmcli.tts.tokens import TtsTokenIds  # noqa: E402

TEXT_CARD = 8000
CORPUS = [
    "Hello world, this is a small test of the speech system.",
    "Bonjour tout le monde, ceci est un petit essai.",
    "The quick brown fox jumps over the lazy dog.",
    "Don't stop: it's a wonderful day (really) for testing words and pauses.",
    "Alice and Bob talk about numbers like 1.5 and 2 seconds.",
]


@pytest.fixture(scope="module")
def tokenizer():
    """A SentencePiece model trained here: ids 0..3 = unk, bos, eos, pad as in the released tokenizers."""
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=proto, vocab_size=80, unk_id=0, bos_id=1, eos_id=2,
        pad_id=3, model_type="unigram", character_coverage=1.0, minloglevel=2, hard_vocab_limit=False)
    return sentencepiece.SentencePieceProcessor(model_proto=proto.getvalue())


IDS = TtsTokenIds.for_text_card(TEXT_CARD)


def _reference(tokenizer, script, multi_speaker, padding_between):
    entries = ref_tts.script_to_entries(tokenizer, ref_tts.TokenIds(TEXT_CARD + 1), float(FRAME_RATE), script,
                                        multi_speaker=multi_speaker, padding_between=padding_between)
    return [(list(e.tokens), e.text, e.padding) for e in entries]


def _ours(entries: list[Entry]):
    return [(list(e.tokens), e.text, e.padding) for e in entries]


SCRIPTS = [
    ["Hello world, this is a small test."],
    ["Don’t stop: it's (really) a wonderful day!"],
    ["Hello there.", "Bonjour, ça va?", "Fine, thanks: and you?"],
    ["", "The other speaker starts.", "Then main."],
    ['Wait <break time="0.5s"/> for it.<break time="1.3s"/>Now<break time="2s" /> again'],
    ['<break time="0.1s"/>a <break time="0.2s">b <break  time="0.6s"  /> c <break time="1.s"/>d'],
    ["  leading and   trailing   spaces \n\t newline ", "", "", "same speaker again"],
    ['Unknown € chars and <break time="3s"/>', '<break time="0.04s"/>'],
    ["word", "", "word"],
]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("multi_speaker", [True, False])
@pytest.mark.parametrize("padding_between", [0, 1, 2])
def test_entries_match_reference(tokenizer, script, multi_speaker, padding_between):
    ours = script_to_entries(tokenizer, IDS, script, multi_speaker=multi_speaker, padding_between=padding_between)
    assert _ours(ours) == _reference(tokenizer, script, multi_speaker, padding_between)


def test_entries_details(tokenizer):
    entries = script_to_entries(tokenizer, IDS, ["Hi you", 'there <break time="0.6s"/>'], multi_speaker=True)
    assert entries[0].tokens[0] == IDS.main and entries[1].tokens[0] != IDS.main
    assert entries[2].tokens[0] == IDS.other
    assert entries[0].padding == len(entries[0].tokens)  # padding_between 1 → len(tokens)
    assert entries[-1] == Entry(tokens=(), text="", padding=8)  # round(7.5) = 8, as Python's round
    assert entries[-1].is_break


def test_bad_break_time_is_input_error(tokenizer):
    script = ['a <break time="1x5s"/> b']
    with pytest.raises(ValueError):  # the reference crashes in float()
        _reference(tokenizer, script, True, 1)
    with pytest.raises(InputError, match="invalid pause"):
        script_to_entries(tokenizer, IDS, script, multi_speaker=True)


# ---------------------------------------------------------------- streaming text in

def _random_pieces(text: str, rng: random.Random) -> list[str]:
    if len(text) < 2:
        return [text]
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8))))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def _chunkings(text: str, rng: random.Random):
    """Whole, character by character, word by word, and random cuts."""
    words = text.split(" ")
    return [[text], list(text), [w + " " for w in words[:-1]] + words[-1:]] + \
        [_random_pieces(text, rng) for _ in range(5)]


STREAM_TEXTS = [
    "Hello world, this is a small test.",
    'hello<break time="0.5s"/>world and <break  time="1.25s"  /> more',
    "I <break you and <break time=\"x\" and <break time=\"1s\" done",
    'tail <break time="1',
    "trailing   ",
    "  lead: (paren) ’quote’  ",
    'x<break time="2s">y<break\ntime="0.2s"\n/>z',
    "",
]


@pytest.mark.parametrize("text", STREAM_TEXTS)
@pytest.mark.parametrize("multi_speaker", [True, False])
def test_stream_equals_whole_text(tokenizer, text, multi_speaker):
    rng = random.Random(len(text))
    whole = _ours(script_to_entries(tokenizer, IDS, [text], multi_speaker=multi_speaker))
    assert whole == _reference(tokenizer, [text], multi_speaker, 1)
    for pieces in _chunkings(text, rng):
        stream = EntryStream(tokenizer, IDS, multi_speaker=multi_speaker)
        assert _ours(list(stream.iter_entries(pieces))) == whole, pieces


def test_stream_word_by_word_yields_each_word_when_complete(tokenizer):
    stream = EntryStream(tokenizer, IDS, multi_speaker=True)
    assert stream.feed("Hello") == []  # not complete until whitespace arrives
    first = stream.feed(" wor")
    assert [e.text for e in first] == ["Hello"]
    assert [e.text for e in stream.feed('ld <break time="0.')] == ["world"]
    assert [e.padding for e in stream.feed('5s"/>end')] == [6]  # round(6.25)
    assert [e.text for e in stream.close()] == ["end"]
    with pytest.raises(ValueError):
        stream.feed("more")


def test_stream_turns_equal_dialog_script(tokenizer):
    turns = ["Hello there.", 'Bonjour <break time="0.5s"/> ça va?', "", "Fine: thanks"]
    stream = EntryStream(tokenizer, IDS, multi_speaker=True)
    out: list[Entry] = []
    for index, turn in enumerate(turns):
        if index:
            out += stream.next_turn()
        for word in turn.split(" "):
            out += stream.feed(word + " ")
    out += stream.close()
    assert _ours(out) == _reference(tokenizer, turns, True, 1)


def test_stream_fuzz_against_reference(tokenizer):
    alphabet = ["hello", " ", "  ", "\n", "<break", ' time="', "0.5", "1", "2", 's"', "/>", ">", "world", "’", ":",
                "(", ")", ".", "x", "€", "s"]
    rng = random.Random(0)
    checked = 0
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
        try:
            expected = _reference(tokenizer, [text], True, 1)
        except ValueError:
            with pytest.raises(InputError):
                list(EntryStream(tokenizer, IDS, multi_speaker=True).iter_entries(list(text)))
            continue
        pieces = _random_pieces(text, rng)
        assert _ours(list(EntryStream(tokenizer, IDS, multi_speaker=True).iter_entries(pieces))) == expected, text
        assert _ours(list(EntryStream(tokenizer, IDS, multi_speaker=True).iter_entries(list(text)))) == expected
        checked += 1
    assert checked > 200


# ---------------------------------------------------------------- dialog scripts

def test_dialog_bracket_tags_and_continuations():
    script = parse_dialog("""
[S1] Hello there.
How are you?

[S2] Fine, thanks.
[S2] Really fine.
[S1]
And you?
""")
    assert script.speakers == ("S1", "S2")
    assert script.turns == ("Hello there. How are you?", "Fine, thanks. Really fine.", "And you?")
    assert script.turn_speakers == ("S1", "S2", "S1")


def test_dialog_name_formats():
    script = parse_dialog("Bob: Hi Alice.\n[Alice]: Hi Bob, it's 10:30 now.\nsee http://x.y\n\nBob: bye")
    assert script.speakers == ("Bob", "Alice")
    assert script.turns == ("Hi Alice.", "Hi Bob, it's 10:30 now. see http://x.y", "bye")
    script = parse_dialog("Dr. Who: (laughs) hello\nMary Jane:\nHi doctor.")
    assert script.speakers == ("Dr. Who", "Mary Jane")
    assert script.turns == ("(laughs) hello", "Hi doctor.")
    with pytest.raises(InputError, match="at most 2 speakers"):
        parse_dialog("A: one\nB: two\nC: three")


def test_dialog_first_speaker_is_main_whatever_its_name():
    script = parse_dialog("[S2] I start.\n[S1] Then me.")
    assert script.speakers == ("S2", "S1")
    assert script.turns == ("I start.", "Then me.")


def test_dialog_errors_and_monologue():
    with pytest.raises(InputError, match="empty"):
        parse_dialog(" \n\n")
    with pytest.raises(InputError, match="no speaker tags"):
        parse_dialog("just some text\nwithout tags")
    with pytest.raises(InputError, match="line 1"):
        parse_dialog("intro text\n[S1] hello")
    with pytest.raises(InputError, match="no text"):
        parse_dialog("[S1]\n[S2]")
    mono = parse_dialog("just some text\nwithout tags", require_speakers=False)
    assert mono.speakers == (MONOLOGUE_SPEAKER,) and mono.turns == ("just some text without tags",)


def test_dialog_turns_feed_script_to_entries(tokenizer):
    script = parse_dialog("[A] Hello there.\n[B] Bonjour!\n[A] Bye.")
    entries = script_to_entries(tokenizer, IDS, list(script.turns), multi_speaker=True)
    starts = [e.tokens[0] for e in entries if e.tokens and e.tokens[0] in (IDS.main, IDS.other)]
    assert starts == [IDS.main, IDS.other, IDS.main]
