"""A second thread for work that is independent of the caller's next ops (e.g. Mimi's encode of frame ``t`` while
the LM steps on the codes of frame ``t - 1``: an STT step is both, and neither reads the other's output).

On CPU each op of a step is an OpenMP parallel region, and under ``OMP_WAIT_POLICY=PASSIVE`` (what ``dsm`` sets,
see :mod:`dsmcli.cpu_threads`) every region wakes a sleeping thread, which on a small VM costs more than many
of the ops themselves. Two independent chains of ops on two threads keep the cores busy through those wake-ups:
the STT step of stt-1b at batch 1 with ``--quantize int4`` (2 threads, nearly quiet 2-core VM) went from ~37 to
~30 ms.

The work runs with the caller's torch thread count and grad mode (both are per thread in torch), so it takes
the same float paths as on the caller's thread: the same bits. The worker is a daemon thread (a read that blocks
in it never holds up the process's exit), ended when its :class:`SideThread` is closed or collected.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import torch

T = TypeVar("T")


class SideThread:
    """One worker thread, started on first use."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Any] | None = None

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Run ``fn(*args)`` on the worker thread as the calling thread would (torch threads, grad mode); its
        result or exception comes back through the future."""
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(self._jobs,), name=self.name, daemon=True).start()
        future: Future[T] = Future()
        self._jobs.put((future, torch.get_num_threads(), torch.is_grad_enabled(), fn, args))
        return future

    def close(self) -> None:
        """End the worker after the jobs already submitted."""
        if self._jobs is not None:
            self._jobs.put(None)
            self._jobs = None

    def __del__(self) -> None:
        self.close()


def _serve(jobs: queue.SimpleQueue[Any]) -> None:
    while (job := jobs.get()) is not None:
        future, threads, grad, fn, args = job
        if not future.set_running_or_notify_cancel():
            continue
        try:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            with torch.set_grad_enabled(grad):
                result = fn(*args)
        except BaseException as error:  # handed to the caller, who re-raises it
            future.set_exception(error)
        else:
            future.set_result(result)
        del job, future, fn, args
