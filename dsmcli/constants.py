"""Named constants of the Mimi codec / DSM time grid and of every DSM token stream. Derive, never restate."""

from fractions import Fraction


def exact_div(x: int | Fraction, y: int | Fraction) -> int:
    """Integer division that refuses a remainder."""
    q = Fraction(x) / Fraction(y)
    if q.denominator != 1:
        raise ValueError(f"{x} is not a multiple of {y}")
    return int(q)


SAMPLE_RATE = 24_000
FRAME_RATE = Fraction(25, 2)  # 12.5 Hz, one DSM step per Mimi frame
FRAME_SIZE = exact_div(SAMPLE_RATE, FRAME_RATE)  # 1920 samples = 80 ms

# Token values shared by every DSM LM and its streams (LMModel.zero_token_id / ungenerated_token_id).
ZERO_TOKEN_ID = -1  # embeds to an exact zero vector; nothing is sampled for it
UNGENERATED_TOKEN_ID = -2  # placeholder in token rings and prefixes for "not known yet"
