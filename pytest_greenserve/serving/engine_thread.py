"""Every engine call of a server on one thread: the thread that loaded the engine (the main one).

FastAPI runs a plain ``def`` endpoint on a worker thread of anyio's pool. An engine loaded on
the main thread then generates on another thread, and CPU thread settings do not follow: torch
ran its intra-op work on one thread there against two on the main thread (measured on the
2-core VM, mini-gpt2: the worker thread's OpenMP pool never woke), so ``torch-cpu@http`` was
not the computation ``torch-cpu`` measured in-process. The server therefore runs uvicorn's event
loop on a thread of its own and the engine here, on the main thread, exactly as the plugin's
in-process target does; requests reach the engine one at a time, in arrival order.

``submit(fn, *args)`` (from the event loop) queues a call and awaits its result;
``run_forever()`` (on the engine's thread) runs queued calls until :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import queue
from typing import Any, Callable

__all__ = ["EngineThread"]

_STOP = object()


class EngineThread:
    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()

    async def submit(self, fn: Callable[..., Any], *args) -> Any:
        """``fn(*args)`` on the engine's thread; its result, or its exception raised here."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((fn, args, loop, future))
        return await future

    def call_soon(self, fn: Callable[..., Any], *args) -> None:
        """``fn(*args)`` on the engine's thread, without waiting (a streamed generation, which
        hands its tokens back itself)."""
        self._jobs.put((fn, args, None, None))

    def run_forever(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            fn, args, loop, future = job
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the request that asked, never lost
                result, error = None, exc
            if future is not None:
                loop.call_soon_threadsafe(_settle, future, result, error)

    def stop(self) -> None:
        self._jobs.put(_STOP)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.cancelled():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
