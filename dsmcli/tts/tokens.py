"""Special values of the TTS text stream (FORMAT.md §6.1).

The text stream of a DSM TTS model carries, per step, one *multiplexed* value built from two text tokens:
the main stream (the word being spoken, one SentencePiece id per step, or PAD / NEW_WORD) and, for models with a
lookahead stream (``second_stream_ahead > 0``), a second token (the word ``second_stream_ahead`` words ahead).
``value = (second + 1) * card + main`` with ``card = text_card + 1``; ``second = -1`` (nothing) makes the second
half of the embedding exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dsmcli.constants import UNGENERATED_TOKEN_ID as UNGENERATED_TOKEN
from dsmcli.constants import ZERO_TOKEN_ID as ZERO_TOKEN

if TYPE_CHECKING:
    from dsmcli.engine.config import LMConfig

# The released models' ids (LMModel defaults): the ids of a loaded model come from its LMConfig (from_lm_config).
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
    def from_lm_config(cls, config: LMConfig) -> TtsTokenIds:
        """Ids of a parsed LM architecture (its ``text_card``, ``text_pad_id`` and ``end_of_padding_id``)."""
        return cls.for_text_card(config.text_card, pad=config.text_pad_id, new_word=config.end_of_padding_id)

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
