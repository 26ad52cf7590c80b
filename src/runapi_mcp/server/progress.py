"""Progress notifications for one waiting tool call, as the spec wants them.

The spec says the value MUST increase with each notification; estimates do not (a model's own
progress may stall at 99 for a while, an estimate of elapsed over expected time is re-based when
the task's status changes). So each value is at least a small step above the last one, taking a
shrinking share of what is left below 99.9: strictly increasing for as long as anyone waits (an
hour of ticks still moves by more than float precision), and 100 only when the task is done.
The first message names the task id: a client that times out, or a user who cancels, still has it.
"""

from __future__ import annotations

import logging
from typing import Any

from mcp.server.mcpserver import Context

from runapi_mcp.server.compat import PROGRESS_MESSAGE_SINCE, has_feature

log = logging.getLogger("runapi_mcp.server")

TOTAL = 100.0
_CEILING = 99.9  # where an unfinished task's progress stays below
_STEP = 0.005  # share of what is left below the ceiling a repeated value moves up by


class ProgressReporter:
    """Sends strictly increasing progress for one task to the client that called the tool."""

    def __init__(self, ctx: Context[Any, Any], task_id: str) -> None:
        self._ctx = ctx
        self._task_id = task_id
        self._with_message = has_feature(ctx.protocol_version, PROGRESS_MESSAGE_SINCE)
        self.last: float | None = None
        self.sent = 0

    async def report(self, fraction: float, message: str, *, done: bool = False) -> None:
        """Report ``fraction`` (0..1) of the work done; ``done`` sends 100 (once)."""
        value = TOTAL if done else min(_CEILING, max(0.0, fraction * TOTAL))
        last = self.last
        if last is not None and value <= last:
            if done or last >= TOTAL:
                return
            value = last + max((_CEILING - last) * _STEP, 1e-9)
        self.last = value
        if self.sent == 0:
            message = f"Task {self._task_id}: {message}"
        self.sent += 1
        try:
            await self._ctx.report_progress(value, TOTAL, message if self._with_message else None)
        except Exception:  # a client gone away must not fail the wait (the task belongs to the manager)
            log.debug("could not send progress for task %s", self._task_id, exc_info=True)
