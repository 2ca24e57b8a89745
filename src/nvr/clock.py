"""Injected time: the real clock, and a simulated one tests can advance by hand."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def wall_ns(self) -> int:
        """CLOCK_REALTIME in nanoseconds since the Unix epoch."""
        ...

    def monotonic_ns(self) -> int:
        """A clock that never steps, in nanoseconds since an arbitrary origin."""
        ...

    async def sleep(self, delay_s: float) -> None: ...


class SystemClock:
    def wall_ns(self) -> int:
        return time.time_ns()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)


class SimulatedClock:
    """A clock that only moves when told to. ``sleep`` returns once ``advance`` passes its end."""

    def __init__(self, wall_ns: int = 1_767_225_600 * 10**9, monotonic_ns: int = 10**12) -> None:
        self._wall_ns = wall_ns
        self._mono_ns = monotonic_ns
        self._sleepers: list[tuple[int, asyncio.Future[None]]] = []

    def wall_ns(self) -> int:
        return self._wall_ns

    def monotonic_ns(self) -> int:
        return self._mono_ns

    def step_wall(self, delta_ns: int) -> None:
        """Step the wall clock alone (an NTP correction) without moving monotonic time."""
        self._wall_ns += delta_ns

    def advance(self, delta_ns: int) -> None:
        self._wall_ns += delta_ns
        self._mono_ns += delta_ns
        due = [s for s in self._sleepers if s[0] <= self._mono_ns]
        self._sleepers = [s for s in self._sleepers if s[0] > self._mono_ns]
        for _, fut in due:
            if not fut.done():
                fut.set_result(None)

    async def sleep(self, delay_s: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._mono_ns + int(delay_s * 1e9), fut))
        await fut
