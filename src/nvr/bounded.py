"""Bounded waits on checks that may hang (statvfs on a dead mount, a locked index)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

_T = TypeVar("_T")


class SingleFlight(Generic[_T]):
    """Runs ``make()`` at most once at a time; each caller waits at most ``timeout_s``.

    A caller that gives up leaves the attempt running, and later callers wait on that same
    attempt instead of starting another: a check that hangs costs one task (or one thread),
    not one per scrape or health probe.
    """

    def __init__(self, make: Callable[[], Coroutine[Any, Any, _T]]) -> None:
        self._make = make
        self._task: asyncio.Task[_T] | None = None

    async def __call__(self, timeout_s: float) -> _T:
        """The result of the attempt in flight (or of a new one); ``TimeoutError`` after
        ``timeout_s``, with the attempt still running."""
        task = self._task
        if task is None or task.done():
            task = self._task = asyncio.ensure_future(self._make())
            task.add_done_callback(_observe)
        return await asyncio.wait_for(asyncio.shield(task), timeout_s)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _observe(task: asyncio.Future[Any]) -> None:
    """Mark an attempt's exception as seen: a caller that timed out never reads it."""
    if not task.cancelled():
        task.exception()
