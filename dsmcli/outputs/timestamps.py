"""The one timestamp formatter shared by the subtitle writers (whisper's ``format_timestamp``)."""

from __future__ import annotations

MS_PER_SECOND = 1_000
MS_PER_MINUTE = 60 * MS_PER_SECOND
MS_PER_HOUR = 60 * MS_PER_MINUTE


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    """``[HH:]MM:SS<marker>mmm`` for ``seconds`` >= 0, milliseconds rounded.

    Hours appear when ``always_include_hours`` (SRT) or when non-zero (VTT).
    """
    if not seconds >= 0:
        raise ValueError(f"non-negative timestamp expected, got {seconds}")
    milliseconds = round(seconds * MS_PER_SECOND)
    hours, milliseconds = divmod(milliseconds, MS_PER_HOUR)
    minutes, milliseconds = divmod(milliseconds, MS_PER_MINUTE)
    whole_seconds, milliseconds = divmod(milliseconds, MS_PER_SECOND)
    hours_marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_marker}{minutes:02d}:{whole_seconds:02d}{decimal_marker}{milliseconds:03d}"


def milliseconds(seconds: float) -> int:
    """Integer milliseconds, as the TSV writer prints them."""
    return round(seconds * MS_PER_SECOND)
