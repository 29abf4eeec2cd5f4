"""Real speech for fixtures and tests: decode an mp3/wav, mix to mono, resample to 24 kHz.

Decoding uses ``soundfile`` and resampling ``soxr`` (both deterministic for a given
library version), so everything derived from these samples is reproducible.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from dsmcli.constants import SAMPLE_RATE

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DIR = REPO_ROOT.parent / "shared"
SHARED_DATA = SHARED_DIR / "data"


@lru_cache(maxsize=8)
def _decode_24k(path: Path) -> np.ndarray:
    import soundfile
    import soxr

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # [N, C]
    mono = data.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    out = np.ascontiguousarray(mono, dtype=np.float32)
    out.flags.writeable = False
    return out


def speech_24k(path: Path | str, seconds: float | None = None, offset: float = 0.0) -> np.ndarray:
    """Mono float32 samples ``[N]`` at 24 kHz of ``path`` from ``offset`` s, ``seconds`` long.

    Zero-padded at the end when the file is shorter than asked. Returns a fresh writable copy.
    """
    full = _decode_24k(Path(path).resolve())
    start = round(offset * SAMPLE_RATE)
    if seconds is None:
        return full[start:].copy()
    n = round(seconds * SAMPLE_RATE)
    out = np.zeros(n, dtype=np.float32)
    chunk = full[start : start + n]
    out[: len(chunk)] = chunk
    return out
