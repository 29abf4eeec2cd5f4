"""Streaming downmix + resampling to the codec rate (soxr, so chunk edges do not click)."""

from __future__ import annotations

import numpy as np
import soxr

from dsmcli.constants import SAMPLE_RATE

RESAMPLE_QUALITY = "HQ"


def downmix(block: np.ndarray) -> np.ndarray:
    """``[frames, channels]`` → float32 mono ``[frames]`` by the mean of the channels."""
    if block.ndim == 1:
        return block.astype(np.float32, copy=False)
    if block.shape[1] == 1:
        return block[:, 0].astype(np.float32, copy=False)
    return block.mean(axis=1, dtype=np.float32)


class StreamResampler:
    """Any rate / channel count → mono float32 at ``out_rate``, chunk by chunk.

    The concatenated outputs of ``process`` then ``flush`` equal ``soxr.resample`` of the
    whole mono signal, whatever the chunk sizes.
    """

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE, quality: str = RESAMPLE_QUALITY) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, np.float32, quality)

    def process(self, block: np.ndarray) -> np.ndarray:
        """``[frames, channels]`` (or ``[frames]``) at ``in_rate`` → ``[n]`` at ``out_rate``."""
        mono = np.ascontiguousarray(downmix(block))
        if self._stream is None:
            return mono.copy()
        return self._stream.resample_chunk(mono, last=False)

    def flush(self) -> np.ndarray:
        """The samples still inside the filter, at the end of the stream."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
