"""The one step loop over the batch slots of a task (continuous batching), for every caller.

A :class:`SlotScheduler` owns a task's batch (a :class:`SlotBatch`: :class:`~dsmcli.stt.batch.SttBatch` or
:class:`~dsmcli.tts.batch.TtsBatch`). A new stream takes a free slot at the next iteration (the task resets
that slot only); each iteration advances, in one batched step, every slot whose stream has input ready, while
the others are paused (their ``active`` flag is off, their state untouched); a slot is freed as soon as its
stream ends or is closed. Streams get their input pushed from any thread (``push`` + :meth:`SlotScheduler.wake`)
or pull it themselves (a file, a pipe), and get their events through their outbox or a callback, so the loop
never waits on a consumer.

Three ways to drive the same loop: a thread of its own (:meth:`SlotScheduler.start`: the server), the caller's
thread until every stream is done (:meth:`SlotScheduler.drain`: ``dsm transcribe`` / ``dsm speak`` / ``dsm
bench``), or the caller's thread while it iterates one stream's events (:meth:`SlotScheduler.iterate`: the
generator API, ``Transcriber.transcribe`` / ``Synthesizer.synthesize``).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from dsmcli.errors import DsmError
from dsmcli.logs import get_logger

log = get_logger(__name__)
IDLE_WAIT_SECONDS = 0.05  # longest sleep of an idle loop between checks (it is woken on input)


class SchedulerFull(DsmError):
    """Every slot is busy and the waiting queue is full."""


class SchedulerClosed(DsmError):
    """The scheduler is shutting down and takes no new streams."""


@dataclass(frozen=True)
class StreamEnd:
    """The last event of every stream: ``error`` (a one-line message) when it failed, else None; ``result``:
    the task's summary of a completed stream (e.g. :class:`~dsmcli.tts.batch.SpeechResult`), if any;
    ``exception``: the error itself (its type gives the exit code), when there is one."""

    error: str | None = None
    result: Any = None
    exception: DsmError | None = field(default=None, compare=False, repr=False)

    def raise_error(self) -> None:
        """Raise the stream's error, if it failed."""
        if self.error is not None:
            raise self.exception if self.exception is not None else DsmError(self.error)


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
        self.result: Any = None  # the task's summary, once finished

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
        """The stream's events as they come, ending with its :class:`StreamEnd` (its error raised when it
        failed). ``timeout``: longest wait for one event (``queue.Empty`` past it)."""
        while True:
            event = self._outbox_queue().get(timeout=timeout)
            if isinstance(event, StreamEnd):
                event.raise_error()
            yield event
            if isinstance(event, StreamEnd):
                return

    def ready_events(self) -> list[object]:
        """The events queued now, without waiting (for a caller that drives the loop itself)."""
        outbox, events = self._outbox_queue(), []
        while not outbox.empty():
            events.append(outbox.get_nowait())
        return events

    def _outbox_queue(self) -> queue.SimpleQueue[object]:
        if self._outbox is None:
            raise RuntimeError("this stream delivers its events to a callback")
        return self._outbox

    # ------------------------------------------------------------------------ step thread side
    def emit(self, event: object) -> None:
        """Hand over one event (a task's result type, or the final :class:`StreamEnd`)."""
        if not self.ended:
            self.ended = isinstance(event, StreamEnd)
            self._deliver(event)

    def finish(self, result: Any = None) -> None:
        """The stream completed: its last event."""
        self.result = result
        self.emit(StreamEnd(result=result))

    def fail(self, error: DsmError) -> None:
        """The stream failed (its input or its output): its last event."""
        self.emit(StreamEnd(error=str(error), exception=error))

    def abort(self) -> None:
        """The loop driving it stops (Ctrl-C, an unexpected error)."""
        self.fail(DsmError("aborted"))


class SinkEnding:
    """Mixin of a command's stream (before :class:`SlotStream` in the bases) whose ``job.sink`` finalizes the
    outputs: the stream's end is handed to that sink (which may raise on finishing: the stream then fails)."""

    job: Any
    ended: bool

    def finish(self, result: Any = None) -> None:
        self.job.sink.finish(result)
        self.ended = True

    def fail(self, error: DsmError) -> None:
        if not self.ended:
            self.ended = True
            self.job.sink.fail(error)


@dataclass(frozen=True)
class StepReport:
    """What one :meth:`SlotBatch.step` did: ``stepped`` (some slot advanced), ``finished`` (slots whose stream
    ended at this step: their :class:`StreamEnd` was emitted)."""

    stepped: bool
    finished: list[int] = field(default_factory=list)


class SlotBatch(Protocol):
    """A task's batch of ``batch_size`` slots, only ever touched from the scheduler's thread."""

    batch_size: int

    def open(self, index: int, stream: Any) -> bool:
        """Open ``stream``'s input for slot ``index`` (a file, a voice); False when it cannot (the stream got its
        failure and the slot stays free)."""
        ...

    def start(self, fresh: dict[int, Any]) -> list[int]:
        """Reset the slots of ``fresh`` (index -> opened stream) for their streams, together; returns the slots
        whose stream already ended (failed to start)."""
        ...

    def stop(self, index: int) -> None:
        """Forget slot ``index`` (its stream was closed); the next ``start`` resets it."""
        ...

    def step(self) -> StepReport:
        """Advance every slot whose stream has input (the others pause)."""
        ...

    def wait(self, timeout: float) -> bool:
        """No slot could step: block up to ``timeout`` on an input the batch reads itself (a pipe); False when it
        has none (pushed input wakes the scheduler instead)."""
        ...


class SlotScheduler:
    """Runs a :class:`SlotBatch` for many streams: free slots, admission, pause, cancellation.

    ``max_waiting``: streams that may wait for a slot beyond the free ones (0: refuse when full; None: no limit,
    as for a command's queue of inputs).
    """

    def __init__(self, batch: SlotBatch, *, max_waiting: int | None = 0, name: str = "dsm-steps") -> None:
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
            if self.max_waiting is not None and len(self._waiting) >= free + self.max_waiting:
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
        self._admit()
        report = self.batch.step()
        self.steps += int(report.stepped)
        self._release(report.finished)
        return report.stepped

    def _admit(self) -> None:
        """Give each free slot, in order, the next waiting stream whose input opens (one that fails to open got
        its failure; the slot takes the next), then start the new streams together."""
        fresh: dict[int, SlotStream] = {}
        for index in range(len(self._slots)):
            while True:
                with self._cond:
                    if self._slots[index] is not None or not self._waiting:
                        break
                    stream = self._waiting.popleft()
                if self.batch.open(index, stream):
                    with self._cond:
                        self._slots[index] = fresh[index] = stream
                    break
        if fresh:
            self._release(self.batch.start(fresh))

    def _drop(self, stream: SlotStream) -> None:
        if stream in self._waiting:
            self._waiting.remove(stream)
        elif stream in self._slots:
            index = self._slots.index(stream)
            self.batch.stop(index)
            self._slots[index] = None
        stream.fail(DsmError("closed"))

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
                log.error("%s: %s: %s", self.name, type(exc).__name__, exc)
                self._fail_all("internal error")
                stepped = False
            if not stepped:
                self._idle()
        self._fail_all("the server is shutting down")

    def _idle(self) -> None:
        """Nothing could step: wait for input (the batch's own pipes, else a push or a new stream)."""
        if self.batch.wait(IDLE_WAIT_SECONDS):
            return
        with self._cond:
            if not self._poked and not self._stopping:
                self._cond.wait(IDLE_WAIT_SECONDS)

    def drain(self) -> None:
        """Run the loop in this thread until no stream holds or waits for a slot (a command's inputs). On any
        exception (Ctrl-C included) the streams in the slots are aborted (they finalize what they wrote)."""
        try:
            while self.busy:
                if not self.run_once():
                    self._idle()
        except BaseException:
            self._abort_all()
            raise

    def iterate(self, stream: SlotStream) -> Iterator[object]:
        """Run the loop in this thread while yielding ``stream``'s events (it delivers to its outbox), up to its
        :class:`StreamEnd` (not yielded; its error is raised). Closing the iterator early closes the stream."""
        try:
            while True:
                for event in stream.ready_events():
                    if isinstance(event, StreamEnd):
                        event.raise_error()
                        return
                    yield event
                if not self.run_once():
                    self._idle()
        finally:
            if not stream.ended:
                stream.close()

    def _abort_all(self) -> None:
        with self._cond:
            streams = [s for s in self._slots if s is not None]
        for stream in streams:
            stream.abort()

    def _fail_all(self, message: str) -> None:
        with self._cond:
            streams = [s for s in self._slots if s is not None] + list(self._waiting)
            for index, slot in enumerate(self._slots):
                if slot is not None:
                    self.batch.stop(index)
                    self._slots[index] = None
            self._waiting.clear()
        for stream in streams:
            stream.fail(DsmError(message))

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
