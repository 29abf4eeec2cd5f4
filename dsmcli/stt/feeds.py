"""Where an STT stream's 80 ms frames come from, in DSM order: ``prefix`` silent frames, the ``lead`` frames (a
prompt's audio and gap), the audio, ``suffix`` silent frames.

* :class:`FrameFeed` pulls the audio from an iterable of chunks (a file, a pipe, a microphone, a numpy array):
  it is always ready, and may block while a live source waits for samples.
* :class:`PushedFrames` takes what a :class:`~dsmcli.stt.session.SttSession` was pushed (from any thread): it
  is ready only when a frame has arrived (or the audio is over), so its slot pauses meanwhile.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np

from dsmcli.audio import FrameChunker
from dsmcli.constants import FRAME_SIZE
from dsmcli.stt.events import Marker

END_OF_AUDIO = object()  # pushed input item: the audio is over


class AudioFeed(Protocol):
    """The frames of one stream, as :class:`~dsmcli.stt.batch.SttBatch` reads them."""

    audio_samples: int  # samples of the stream's audio received so far
    buffered: int  # samples received and not yet encoded (what a live client is ahead of the model)

    def ready(self) -> bool:
        """A frame can be taken now, or the stream is over (its final step is due)."""
        ...

    def next_frame(self) -> np.ndarray | None:
        """The next ``[FRAME_SIZE]`` frame, or None when the stream is over. DsmError when its input fails."""
        ...

    def due_markers(self, steps: int, over: bool) -> list[int]:
        """Ids of the markers whose audio the model has consumed after ``steps`` steps (all of them if ``over``)."""
        ...


def _silence(frames: int) -> np.ndarray:
    return np.zeros((frames, FRAME_SIZE), dtype=np.float32)


class FrameFeed:
    """The frames of audio pulled from ``chunks`` (float32 mono 24 kHz, any lengths)."""

    def __init__(self, chunks: Iterable[np.ndarray], prefix: int, suffix: int, lead: np.ndarray | None = None) -> None:
        self._chunks: Iterator[np.ndarray] | None = iter(chunks)
        self._chunker = FrameChunker(FRAME_SIZE)
        self._ready: deque[np.ndarray] = deque(_silence(prefix))
        if lead is not None:
            self._ready.extend(lead)
        self._suffix = suffix
        self.audio_samples = 0
        self.buffered = 0  # pulled as needed

    def ready(self) -> bool:
        return True

    def next_frame(self) -> np.ndarray | None:
        """The next ``[FRAME_SIZE]`` frame, or None when the stream is over. May block on a live source."""
        while not self._ready and self._chunks is not None:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._chunks = None
                self._ready.extend(self._chunker.flush())
                self._ready.extend(_silence(self._suffix))
            else:
                self.audio_samples += len(chunk)
                self._ready.extend(self._chunker.push(chunk))
        return self._ready.popleft() if self._ready else None

    def due_markers(self, steps: int, over: bool) -> list[int]:
        return []


class PushedFrames:
    """The frames of the items a session was pushed: sample arrays, :class:`Marker` requests, ``END_OF_AUDIO``.
    ``take_input()`` gives the items pushed since its last call; ``report(consumed)`` tells the session how many
    of its samples went into the model."""

    def __init__(self, take_input, report, prefix: int, suffix: int, lead: np.ndarray | None = None) -> None:
        self._take_input, self._report = take_input, report
        self._prefix = prefix + (0 if lead is None else len(lead))
        self._suffix = suffix
        self._frames: deque[np.ndarray] = deque(_silence(prefix))
        if lead is not None:
            self._frames.extend(lead)
        self._chunker = FrameChunker(FRAME_SIZE)
        self._markers: deque[tuple[int, int]] = deque()  # (steps due, id)
        self.audio_samples = 0
        self.encoded = 0  # frames given to Mimi (prefix, audio, suffix)
        self.over = False

    def ready(self) -> bool:
        for item in self._take_input():
            self._add(item)
        return bool(self._frames) or self.over

    def _add(self, item: object) -> None:
        if self.over:
            return
        if item is END_OF_AUDIO:
            self._frames.extend(self._chunker.flush())
            self._frames.extend(_silence(self._suffix))
            self.over = True
        elif isinstance(item, Marker):
            frames = self._prefix + math.ceil(self.audio_samples / FRAME_SIZE) + self._suffix
            self._markers.append((frames + 1, item.id))
        else:
            samples: np.ndarray = item  # type: ignore[assignment]
            self.audio_samples += len(samples)
            self._frames.extend(self._chunker.push(samples))

    def next_frame(self) -> np.ndarray | None:
        if not self._frames:
            return None
        self.encoded += 1
        self._report(min(self.audio_samples, max(0, self.encoded - self._prefix) * FRAME_SIZE))
        return self._frames.popleft()

    @property
    def buffered(self) -> int:
        """Samples of the client's audio received and not yet encoded (the server's own silence not counted)."""
        return max(0, self.audio_samples - max(0, self.encoded - self._prefix) * FRAME_SIZE)

    def due_markers(self, steps: int, over: bool) -> list[int]:
        due = []
        while self._markers and (self._markers[0][0] <= steps or over):
            due.append(self._markers.popleft()[1])
        return due
