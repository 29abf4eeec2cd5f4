"""Special values of the TTS text stream (FORMAT.md §6.1).

The text stream of a DSM TTS model carries, per step, one *multiplexed* value built from two text tokens:
the main stream (the word being spoken, one SentencePiece id per step, or PAD / NEW_WORD) and, for models with a
lookahead stream (``second_stream_ahead > 0``), a second token (the word ``second_stream_ahead`` words ahead).
``value = (second + 1) * card + main`` with ``card = text_card + 1``; ``second = -1`` (nothing) makes the second
half of the embedding exactly zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Values shared by every DSM LM (LMModel.zero_token_id / ungenerated_token_id in the reference).
ZERO_TOKEN = -1  # embedded as an exact zero vector
UNGENERATED_TOKEN = -2  # placeholder: "not generated yet" in token caches and prefixes

# LMModel constructor defaults, used when config.json does not name them.
DEFAULT_PAD_ID = 3  # existing_text_padding_id
DEFAULT_NEW_WORD_ID = 0  # existing_text_end_padding_id (EPAD in the STT models)

# Speaker-turn tokens of the TTS text vocabulary (TokenIds.main / .other; Rust text_bos/eos_token).
MAIN_SPEAKER_ID = 1
OTHER_SPEAKER_ID = 2


@dataclass(frozen=True)
class TtsTokenIds:
    """Token ids of the TTS text stream.

    ``card`` is the multiplexing base, ``text_card + 1`` (the text vocabulary including the initial token).
    """

    card: int
    new_word: int = DEFAULT_NEW_WORD_ID
    pad: int = DEFAULT_PAD_ID
    main: int = MAIN_SPEAKER_ID
    other: int = OTHER_SPEAKER_ID
    zero: int = ZERO_TOKEN
    ungenerated: int = UNGENERATED_TOKEN

    def __post_init__(self) -> None:
        specials = (self.new_word, self.pad, self.main, self.other)
        if len(set(specials)) != len(specials):
            raise ValueError(f"special text ids must differ: {specials}")
        if not all(0 <= tok < self.card for tok in specials):
            raise ValueError(f"special text ids {specials} must lie in [0, {self.card})")

    @classmethod
    def for_text_card(cls, text_card: int, pad: int = DEFAULT_PAD_ID,
                      new_word: int = DEFAULT_NEW_WORD_ID) -> TtsTokenIds:
        """Ids for an LM whose text vocabulary has ``text_card`` entries (initial token excluded)."""
        return cls(card=text_card + 1, new_word=new_word, pad=pad)

    @classmethod
    def from_lm_kwargs(cls, lm_kwargs: Mapping[str, Any]) -> TtsTokenIds:
        """Ids from the architecture keys of config.json (``Checkpoint.lm_kwargs``)."""
        if "text_card" not in lm_kwargs:
            raise ValueError("config.json has no text_card")
        return cls.for_text_card(
            int(lm_kwargs["text_card"]),
            pad=int(lm_kwargs.get("existing_text_padding_id", DEFAULT_PAD_ID)),
            new_word=int(lm_kwargs.get("existing_text_end_padding_id", DEFAULT_NEW_WORD_ID)),
        )

    def speaker(self, turn_index: int) -> int:
        """Speaker token of a turn: MAIN for even turns, OTHER for odd ones."""
        return (self.main, self.other)[turn_index % 2]

    def mux(self, main: int, second: int = ZERO_TOKEN) -> int:
        """Multiplex a main-stream token and a second-stream token (``-1`` = none) into one input value."""
        return (second + 1) * self.card + main

    def demux(self, value: int) -> tuple[int, int]:
        """Inverse of :meth:`mux` for values ``>= 0``: returns ``(main, second)``."""
        if value < 0:
            raise ValueError(f"cannot demultiplex the special value {value}")
        return value % self.card, value // self.card - 1
