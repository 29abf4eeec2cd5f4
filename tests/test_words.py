"""Word assembly from STT text tokens (dsmcli.stt.words) against the reference rules (FORMAT.md §5.3).

The reference is ``tokens_to_timestamped_text`` of the DSM repo's ``stt_from_file_pytorch.py``
(not installed): ``reference_words`` below restates its rules from FORMAT.md. The comparison
uses sequences where the reference is well defined (text after the first EPAD, the last word
ending at an eos or before the end of the sequence within 12.5 steps); the cases where we
deliberately differ are tested on their own.
"""

from __future__ import annotations

import io
import random
from fractions import Fraction

import numpy as np
import pytest
import sentencepiece as spm

from dsmcli.constants import FRAME_RATE
from dsmcli.results import Word
from dsmcli.stt.words import WordAssembler, tokens_to_words

EPAD, BOS, EOS, PAD = 0, 1, 2, 3
CORPUS = """The quick brown fox jumps over the lazy dog. Streaming speech recognition emits each word once.
Hello world, this is a small test of the word assembler. Subtitles are written as they come.
Kyutai released delayed streams modeling checkpoints for speech to text and text to speech.
Numbers like 1234 and 56 appear too; punctuation: commas, periods! Questions? Yes.
Bonjour le monde, ceci est un petit test. L'homme qui marchait vite.""".splitlines()
WORDS = " ".join(CORPUS).split()


@pytest.fixture(scope="module")
def tokenizer() -> spm.SentencePieceProcessor:
    """A tiny SentencePiece model with the STT id layout: 0..3 = unk(EPAD)/bos/eos/pad."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 5),
        model_writer=model,
        vocab_size=120,
        unk_id=EPAD,
        bos_id=BOS,
        eos_id=EOS,
        pad_id=PAD,
        hard_vocab_limit=False,
        character_coverage=1.0,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def reference_words(tokens, tokenizer, frame_rate, offset):
    """FORMAT.md §5.3, restated: ([(text, start, end)], number of multi-word segments)."""
    frame_rate = float(frame_rate)

    def stamp(start, end):
        return max(0, start / frame_rate - offset), max(0, end / frame_rate - offset)

    def decode_segment(start, end, out):
        text = tokenizer.decode([t for t in tokens[start:end] if t > PAD])
        words = text.split()
        if len(words) == 1:
            out.append((text, *stamp(start, end)))
        elif len(words) > 1:
            multi.append((start, end))
            for word in words[:-1]:
                n = len(tokenizer.encode(word))
                out.append((word, *stamp(start, start + n)))
                start += n
            out.append((words[-1], *stamp(start, end)))

    boundaries = [i for i, t in enumerate(tokens) if t == EPAD]
    out: list = []
    multi: list = []
    if not boundaries:
        return out, 0
    for a, b in zip(boundaries, boundaries[1:]):
        decode_segment(a + 1, b, out)
    last_start = boundaries[-1] + 1
    eos = [i for i, t in enumerate(tokens[last_start:]) if t == EOS]
    last_end = last_start + eos[0] if eos else min(len(tokens), last_start + frame_rate)
    assert last_end == int(last_end), "the reference's float slice index (its bug) is avoided here"
    decode_segment(last_start, int(last_end), out)
    return out, len(multi)


def synth_tokens(rng: random.Random, tokenizer, n_words: int) -> list[int]:
    """A plausible STT text stream: pads, EPAD before most words, word pieces, pads."""
    tokens = [PAD] * rng.randint(0, 8)
    for index in range(n_words):
        missed = index > 0 and rng.random() < 0.2  # boundary missed: words run together
        if not missed:
            tokens.append(EPAD)
        tokens += tokenizer.encode(rng.choice(WORDS))
        tokens += [PAD] * rng.choice([0, 0, 1, 2, 5])
    last_epad = max(i for i, t in enumerate(tokens) if t == EPAD)
    room = last_epad + 13 - len(tokens)  # without eos, the reference needs len <= start + 12.5
    if room < 0 or rng.random() < 0.5:
        tokens += [EOS] + [PAD] * rng.randint(0, 20)
    else:
        tokens += [PAD] * rng.randint(0, room)
    return tokens


def assembler(tokenizer, offset) -> WordAssembler:
    return WordAssembler(
        tokenizer, end_of_padding_id=EPAD, pad_id=PAD, eos_id=EOS, time_offset_seconds=offset, frame_rate=FRAME_RATE
    )


def words_of(tokens, tokenizer, offset) -> list[Word]:
    return tokens_to_words(
        tokens, tokenizer, end_of_padding_id=EPAD, pad_id=PAD, eos_id=EOS, time_offset_seconds=offset
    )


@pytest.mark.parametrize("offset", [0.5, 3.5, 3.54])
def test_matches_reference_rules_on_random_streams(tokenizer, offset):
    rng = random.Random(int(offset * 100))
    compared = multi = 0
    for _ in range(300):
        tokens = synth_tokens(rng, tokenizer, rng.randint(1, 12))
        if tokens[0] != EPAD and any(t > PAD for t in tokens[: tokens.index(EPAD)]):
            continue  # text before the first boundary: the reference drops it (tested below)
        ours = words_of(tokens, tokenizer, offset)
        ref, n_multi = reference_words(tokens, tokenizer, FRAME_RATE, offset)
        assert [w.text.strip() for w in ours] == [r[0].strip() for r in ref]
        for word, (_, start, end) in zip(ours, ref):
            assert word.start == pytest.approx(start, abs=1e-9)
            assert word.end == pytest.approx(end, abs=1e-9)
        compared += len(ref)
        multi += n_multi
    assert compared > 1000 and multi > 100, (compared, multi)  # many words, many missed boundaries


def test_incremental_equals_whole_and_words_leave_at_the_next_boundary(tokenizer):
    rng = random.Random(7)
    for _ in range(50):
        tokens = synth_tokens(rng, tokenizer, 8)
        state = assembler(tokenizer, 0.5)
        incremental: list[Word] = []
        for step, token in enumerate(tokens):
            new = state.push(step, np.int64(token))  # tensor / numpy scalars, as the engine gives
            if new:
                assert token == EPAD  # a word is final only once the next boundary comes
                assert all(w.end == pytest.approx(max(0, step / 12.5 - 0.5)) for w in new[-1:])
            incremental += new
        incremental += state.finish(len(tokens) - 1)
        assert incremental == words_of(tokens, tokenizer, 0.5)


def test_times_are_exact_and_spaces_whisper_style(tokenizer):
    hello, world = tokenizer.encode("Hello"), tokenizer.encode("world.")
    # step:      0    1    2..        EPAD at 49, "world." from step 50
    tokens = [PAD, EPAD, *hello] + [PAD] * (49 - 2 - len(hello)) + [EPAD, *world, EOS]
    words = words_of(tokens, tokenizer, 3.54)  # 2.6B: 1.04 s silence prefix + 2.5 s delay
    assert [w.text for w in words] == [" Hello", " world."]
    assert words[0].start == 0.0  # 2/12.5 - 3.54 < 0: clamped
    assert words[1].start == 0.46  # 50/12.5 - 3.54, exactly (float math gives 0.45999999999999996)
    assert words[0].end == 0.38  # 49/12.5 - 3.54
    assert words[1].end == float(Fraction(50 + len(world)) / FRAME_RATE - Fraction("3.54"))
    assert "".join(w.text for w in words) == " Hello world."


def test_missed_boundary_splits_by_token_counts(tokenizer):
    a, b, c = (tokenizer.encode(w) for w in ("quick", "brown", "fox"))
    tokens = [EPAD, *a, *b, PAD, *c, PAD, PAD, EPAD]
    words = words_of(tokens, tokenizer, 0.0)
    assert [w.text for w in words] == [" quick", " brown", " fox"]
    step = Fraction(1, 1) / FRAME_RATE
    assert words[0].start == float(1 * step) and words[0].end == float((1 + len(a)) * step)
    assert words[1].start == words[0].end and words[1].end == float((1 + len(a) + len(b)) * step)
    assert words[2].start == words[1].end and words[2].end == float((len(tokens) - 1) * step)


def test_deliberate_differences_keep_text(tokenizer):
    hi, dog = tokenizer.encode("Hello"), tokenizer.encode("dog.")
    # text before any EPAD: the reference drops it; we keep it, as if a boundary preceded step 0
    words = words_of([PAD, *hi, PAD, EPAD, *dog], tokenizer, 0.0)
    assert [w.text for w in words] == [" Hello", " dog."]
    assert (words[0].start, words[0].end) == (0.0, float(Fraction(len(hi) + 2) / FRAME_RATE))
    # the last word lasts at most 1 s when no eos comes (the reference crashes on this case)
    tokens = [EPAD, *dog] + [PAD] * 40
    (word,) = words_of(tokens, tokenizer, 0.0)
    assert (word.start, word.end) == (0.08, 0.08 + 1.0)
    # a running start never passes its segment's end
    long_a, long_b = tokenizer.encode("supercalifragilistic"), tokenizer.encode("checkpoints")
    squeezed = words_of([EPAD, *long_a[:2], *long_b[:1], EPAD], tokenizer, 0.0)
    assert all(w.start <= w.end <= 0.32 for w in squeezed)


def test_piece_without_word_mark_glues_and_probabilities_average(tokenizer):
    state = assembler(tokenizer, 0.0)
    pieces = tokenizer.encode("Hello")  # ['▁', 'H', 'e', 'll', 'o']
    tail = [t for t in tokenizer.encode("ll") if not tokenizer.id_to_piece(t).startswith("\u2581")]
    events = [(EPAD, None)] + [(t, 0.5) for t in pieces] + [(EPAD, None)] + [(t, 1.0) for t in tail]
    out = []
    for step, (token, p) in enumerate(events):
        out += state.push(step, token, p)
    out += state.finish()
    assert out[0] == Word(" Hello", 0.08, float(Fraction(len(pieces) + 1) / FRAME_RATE), 0.5)
    assert out[1].text == "ll" and out[1].probability == 1.0  # no leading space: glued on
    with pytest.raises(ValueError, match="steps must increase"):
        state.push(3, PAD)
    state.reset()
    assert state.push(0, EPAD) == [] and state.finish() == []
