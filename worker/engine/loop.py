"""An event loop on its own thread, for engines.

An engine's queue, futures and tasks live on one loop; callers live on others (runpod's handler loop,
uvicorn's loop, `asyncio.run` in tests and at start-up). `LoopThread.call` runs a coroutine on the
engine's loop and awaits it from the caller's loop; cancelling the caller cancels the coroutine there,
which is how a cancelled job's pages leave the queue. Plain Python: no ML imports.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{name}-loop", daemon=True)
        self._thread.start()
        self.closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` running on this thread's loop, from any other loop."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wrap_future(future)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30) -> T:
        """Run `coro` on this thread's loop and block until it ends (start-up, stats, shutdown)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
