"""Hand a stream's events from the step thread to the event loop that serves its client."""

from __future__ import annotations

import asyncio

from dsmcli.engine.scheduler import StreamEnd


class EventPipe:
    """``deliver`` (any thread) -> ``await get()`` (the loop). Never blocks the step thread: the queue is
    unbounded, and a slow client only delays its own reads (its stream produces at most real-time-ish output)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[object] = asyncio.Queue()

    def deliver(self, event: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed (shutdown): nobody is listening any more
            pass

    async def get(self) -> object:
        return await self.queue.get()

    async def until_end(self):
        """Events up to and including the :class:`StreamEnd`."""
        while True:
            event = await self.get()
            yield event
            if isinstance(event, StreamEnd):
                return
