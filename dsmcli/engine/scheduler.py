"""One step loop over the batch slots of a task, shared by live streams (continuous batching).

A :class:`SlotScheduler` owns a task's batch (a :class:`SlotBatch`: the STT or TTS session batch). A new
stream takes a free slot at the next iteration (the task resets that slot only); each iteration advances, in
one batched step, every slot whose stream has input waiting, while the others are paused (their ``active``
flag is off, their state untouched); a slot is freed as soon as its stream ends or is closed. Streams hand
input over from any thread (``push`` + :meth:`SlotScheduler.wake`) and get their events through their outbox,
so the loop never waits on a consumer. The loop runs in its own thread (:meth:`SlotScheduler.start`) or is
driven by the caller (:meth:`SlotScheduler.run_once`).
"""

from __future__ import annotations

import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from dsmcli.errors import DsmError

IDLE_WAIT_SECONDS = 0.05  # longest sleep of an idle loop between checks (it is woken on input)


class SchedulerFull(DsmError):
    """Every slot is busy and the waiting queue is full."""


class SchedulerClosed(DsmError):
    """The scheduler is shutting down and takes no new streams."""


@dataclass(frozen=True)
class StreamEnd:
    """The last event of every stream: ``error`` (a one-line message) when it failed, else None; ``result``:
    the task's summary of a completed stream (e.g. :class:`~dsmcli.tts.synthesizer.SpeechResult`), if any."""

    error: str | None = None
    result: Any = None


class SlotStream:
    """A live stream on a slot: a thread-safe input handoff and an outbox of events.

    ``deliver(event)`` is called from the step thread for each event (the server hands them to its event loop);
    without it, events queue up and :meth:`events` yields them. The last event is always a :class:`StreamEnd`.
    """

    def __init__(self, deliver: Callable[[object], None] | None = None) -> None:
        self._outbox: queue.SimpleQueue[object] | None = None if deliver is not None else queue.SimpleQueue()
        self._deliver = deliver if deliver is not None else self._outbox.put  # type: ignore[union-attr]
        self._input: deque[object] = deque()
        self.scheduler: SlotScheduler | None = None
        self.ended = False

    # ----------------------------------------------------------------- caller side (any thread)
    def _put_input(self, item: object) -> None:
        self._input.append(item)
        if self.scheduler is not None:
            self.scheduler.wake()

    def take_input(self) -> list[object]:
        """Everything pushed since the last call (step thread)."""
        items = []
        while self._input:
            items.append(self._input.popleft())
        return items

    def close(self) -> None:
        """Give the slot back now (the client is gone); no more events are produced."""
        if self.scheduler is not None:
            self.scheduler.cancel(self)

    def events(self, timeout: float | None = None) -> Iterator[object]:
        """The stream's events as they come, ending with its :class:`StreamEnd` (raised as DsmError when it
        failed). ``timeout``: longest wait for one event (``queue.Empty`` past it)."""
        if self._outbox is None:
            raise RuntimeError("this stream delivers its events to a callback")
        while True:
            event = self._outbox.get(timeout=timeout)
            if isinstance(event, StreamEnd):
                if event.error is not None:
                    raise DsmError(event.error)
                yield event
                return
            yield event

    # ------------------------------------------------------------------------ step thread side
    def emit(self, event: object) -> None:
        if not self.ended:
            self.ended = isinstance(event, StreamEnd)
            self._deliver(event)


@dataclass(frozen=True)
class StepReport:
    """What one :meth:`SlotBatch.step` did: ``stepped`` (some slot advanced), ``finished`` (slots whose stream
    ended at this step: their :class:`StreamEnd` was emitted)."""

    stepped: bool
    finished: list[int] = field(default_factory=list)


class SlotBatch(Protocol):
    """A task's batch of ``batch_size`` slots, only ever touched from the scheduler's thread."""

    batch_size: int

    def start(self, fresh: dict[int, Any]) -> list[int]:
        """Reset the slots of ``fresh`` (index -> stream) for their streams; returns the slots whose stream
        already ended (failed to start)."""
        ...

    def stop(self, index: int) -> None:
        """Forget slot ``index`` (its stream was closed); the next ``start`` resets it."""
        ...

    def step(self) -> StepReport:
        """Advance every slot whose stream has input (the others pause)."""
        ...


class SlotScheduler:
    """Runs a :class:`SlotBatch` for many streams: free slots, admission, pause, cancellation.

    ``max_waiting``: streams that may wait for a slot beyond the free ones (0: refuse when full).
    """

    def __init__(self, batch: SlotBatch, *, max_waiting: int = 0, name: str = "dsm-steps") -> None:
        self.batch, self.max_waiting, self.name = batch, max_waiting, name
        self._cond = threading.Condition()
        self._slots: list[SlotStream | None] = [None] * batch.batch_size
        self._waiting: deque[SlotStream] = deque()
        self._cancelled: list[SlotStream] = []
        self._poked = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # batched steps run

    # ----------------------------------------------------------------------------- any thread
    @property
    def busy(self) -> int:
        """Slots holding a stream, plus streams waiting for one."""
        with self._cond:
            return sum(s is not None for s in self._slots) + len(self._waiting)

    @property
    def batch_size(self) -> int:
        return self.batch.batch_size

    def open(self, stream: SlotStream) -> None:
        """Admit ``stream``: it gets a slot at the next iteration. SchedulerFull / SchedulerClosed."""
        with self._cond:
            if self._stopping:
                raise SchedulerClosed("the server is shutting down")
            free = sum(s is None or s.ended for s in self._slots)  # an ended stream's slot is freed next
            if len(self._waiting) >= free + self.max_waiting:
                raise SchedulerFull("no free channels")
            stream.scheduler = self
            self._waiting.append(stream)
            self._poke()

    def cancel(self, stream: SlotStream) -> None:
        with self._cond:
            self._cancelled.append(stream)
            self._poke()

    def wake(self) -> None:
        """New input for some stream."""
        with self._cond:
            self._poke()

    def _poke(self) -> None:
        self._poked = True
        self._cond.notify()

    # ---------------------------------------------------------------------------- step thread
    def run_once(self) -> bool:
        """One iteration: cancellations, admissions, one batched step. True when a slot advanced."""
        with self._cond:
            self._poked = False
            cancelled, self._cancelled = self._cancelled, []
            for stream in cancelled:
                self._drop(stream)
            fresh: dict[int, SlotStream] = {}
            for index, slot in enumerate(self._slots):
                if slot is None and self._waiting:
                    fresh[index] = self._slots[index] = self._waiting.popleft()
        if fresh:
            self._release(self.batch.start(fresh))
        report = self.batch.step()
        self.steps += int(report.stepped)
        self._release(report.finished)
        return report.stepped

    def _drop(self, stream: SlotStream) -> None:
        if stream in self._waiting:
            self._waiting.remove(stream)
        elif stream in self._slots:
            index = self._slots.index(stream)
            self.batch.stop(index)
            self._slots[index] = None
        stream.emit(StreamEnd(error="closed"))

    def _release(self, finished: list[int]) -> None:
        with self._cond:
            for index in finished:
                self._slots[index] = None

    def run(self) -> None:
        """The loop: iterate while there is work, sleep when idle (woken by input), until :meth:`stop`."""
        while True:
            with self._cond:
                if self._stopping:
                    break
            try:
                stepped = self.run_once()
            except Exception as exc:  # a bug or a device failure: fail the streams, keep the loop alive
                print(f"dsm: error: {self.name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                self._fail_all("internal error")
                stepped = False
            if not stepped:
                with self._cond:
                    if not self._poked and not self._stopping:
                        self._cond.wait(IDLE_WAIT_SECONDS)
        self._fail_all("the server is shutting down")

    def _fail_all(self, message: str) -> None:
        with self._cond:
            streams = [s for s in self._slots if s is not None] + list(self._waiting)
            for index, slot in enumerate(self._slots):
                if slot is not None:
                    self.batch.stop(index)
                    self._slots[index] = None
            self._waiting.clear()
        for stream in streams:
            stream.emit(StreamEnd(error=message))

    def start(self) -> SlotScheduler:
        """Run the loop in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new streams, end the loop (open streams get an error) and wait for the thread."""
        with self._cond:
            self._stopping = True
            self._poke()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> SlotScheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
