"""Time, read through one object: monotonic time, wall time, and sleep.

Whatever measures or waits (the client's retry waits, the spend guard's day, the task manager's polls,
callbacks and deadlines) takes a :class:`Clock`, the system's by default. A test runs it on a clock it moves
by hand, and proves "nothing happened for five seconds" by moving five seconds, not by waiting them.

A leaf module (it imports nothing of this package): the client, the lowest layer that waits, and every
layer above it share this one definition.
"""

from __future__ import annotations

import time
from typing import Final, Protocol

import anyio
from anyio.lowlevel import checkpoint

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "wait_for_event"]


class Clock(Protocol):
    """Where a component reads the time and sleeps."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (durations, deadlines, schedules)."""
        ...

    def time(self) -> float:
        """Wall time, epoch seconds (what is stored and shown)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""
        ...


class SystemClock:
    """The process's own clocks and anyio's sleep."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Final = SystemClock()


async def wait_for_event(clock: Clock, event: anyio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set, at most ``seconds`` on ``clock``; whether it is set.

    ``anyio.move_on_after`` would time the wait on the event loop's own clock, out of the clock's reach:
    the timeout is a sleep on ``clock`` racing the event instead."""
    if event.is_set():
        await checkpoint()
        return True
    async with anyio.create_task_group() as tg:

        async def time_out() -> None:
            await clock.sleep(seconds)
            tg.cancel_scope.cancel()

        tg.start_soon(time_out)
        await event.wait()
        tg.cancel_scope.cancel()
    return event.is_set()
