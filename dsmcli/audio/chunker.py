"""Re-chunk a stream of arbitrary-size sample chunks into exact codec frames."""

from __future__ import annotations

import numpy as np

from dsmcli.constants import FRAME_SIZE


class FrameChunker:
    """Collects float32 mono samples and hands them out as whole frames of ``frame_size``."""

    def __init__(self, frame_size: int = FRAME_SIZE) -> None:
        self.frame_size = frame_size
        self._pending = np.zeros(0, dtype=np.float32)

    @property
    def pending(self) -> int:
        """Samples held back until a frame is full."""
        return len(self._pending)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add ``[n]`` samples; return the completed frames ``[k, frame_size]`` (k may be 0)."""
        data = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32).reshape(-1)])
        whole = len(data) - len(data) % self.frame_size
        self._pending = data[whole:]
        return data[:whole].reshape(-1, self.frame_size)

    def flush(self) -> np.ndarray:
        """The zero-padded last frame ``[1, frame_size]``, or ``[0, frame_size]`` if none is pending."""
        if not len(self._pending):
            return np.zeros((0, self.frame_size), dtype=np.float32)
        frame = np.zeros((1, self.frame_size), dtype=np.float32)
        frame[0, : len(self._pending)] = self._pending
        self._pending = np.zeros(0, dtype=np.float32)
        return frame
