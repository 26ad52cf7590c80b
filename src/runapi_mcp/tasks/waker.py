"""The completion waker: RunAPI's callbacks wake a task's poll loop, which then reads the status once.

With completion webhooks on (``callback_base``), every create carries a ``callback_url`` with a secret of
its own task. A callback with the right secret wakes the task's poll loop for one status read (its body is
never trusted: the read and the downloads decide), at most once per ``callback_min_gap_s`` however many
come; polling goes on at a slow fallback pace in case the callback never comes. The poll loop sleeps here
(:meth:`CompletionWaker.nap`), so a callback, or a cancel, ends its sleep at once.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anyio
from anyio.abc import TaskGroup

from runapi_mcp.catalog import PreparedRequest
from runapi_mcp.client import RunAPIError
from runapi_mcp.clock import Clock, wait_for_event
from runapi_mcp.tasks.records import TaskRecord
from runapi_mcp.tasks.registry import TaskRegistry
from runapi_mcp.tasks.schedule import PollPolicy

log = logging.getLogger("runapi_mcp.tasks")

# The longest task id and token a callback URL may carry: anything longer is no callback of ours.
_MAX_CALLBACK_ID = 256


@dataclass
class _Wake:
    """One task's wake-ups: the event its poll loop sleeps on, and when a callback last set it."""

    event: anyio.Event = field(default_factory=anyio.Event)
    last: float = -math.inf  # when a callback last woke the loop (floods are rate-limited from it)
    deferred: bool = False  # a callback inside the gap is kept: it wakes the loop when the gap ends


class CompletionWaker:
    """Callback URLs for creates, the callbacks' check, and the sleep of every poll loop."""

    def __init__(self, registry: TaskRegistry, clock: Clock, policy: PollPolicy, callback_base: str | None) -> None:
        self._registry = registry
        self._clock = clock
        self._policy = policy
        # Where RunAPI reaches this server's completion callbacks (Settings.callback_base); None: polling only.
        self._callback_base = callback_base.rstrip("/") if callback_base else None
        self._wakes: dict[str, _Wake] = {}  # by the server's task id
        self.tg: TaskGroup | None = None  # where a wake kept for the end of a gap waits (set while running)

    # -- the create ------------------------------------------------------------------------------------
    def new_token(self, prepared: PreparedRequest) -> str | None:
        """A fresh secret for a new task's callback URL, when webhooks are on and the model takes one.

        A callback_url the caller set is theirs and is kept: that task is polled as usual instead."""
        if self._callback_base is None or "callback_url" not in prepared.model.fields:
            return None
        if "callback_url" in prepared.body:
            return None
        return secrets.token_urlsafe(32)

    def create_body(self, record: TaskRecord) -> dict[str, Any]:
        """The create's body: the request, plus the callback URL of a task that has a token.

        Built from the record each time, so a create re-sent after a lost answer is the same body (same
        key, same body: RunAPI returns the task it made). The URL stays out of ``record.request``, which
        is written to the library's sidecar files: the token is kept in the store only."""
        if record.callback_token is None or self._callback_base is None:
            return record.request
        url = f"{self._callback_base}/{quote(record.task_id, safe='')}?token={record.callback_token}"
        return {**record.request, "callback_url": url}

    def calls_back(self, record: TaskRecord) -> bool:
        """Whether RunAPI calls this server back about the task (read afresh: a restart without webhooks
        polls a task created with them as usual)."""
        return record.callback_token is not None and self._callback_base is not None

    # -- callbacks -------------------------------------------------------------------------------------
    async def verified(self, task_id: str, token: str) -> TaskRecord | None:
        """The record of the server's task ``task_id`` if ``token`` is its callback secret, else None.

        None for an unknown task, one created without a callback, or a wrong token alike, so task ids
        cannot be probed. Not owner-checked: RunAPI is no user; the token is the credential."""
        if not (isinstance(task_id, str) and isinstance(token, str)) or not (0 < len(token) <= _MAX_CALLBACK_ID):
            return None
        if not 0 < len(task_id) <= _MAX_CALLBACK_ID:
            return None
        tracked = self._registry.held(task_id)
        record = tracked.record if tracked is not None else await self._registry.store.get(task_id)
        # By the server's id only: that is what the callback URL names (both lookups find RunAPI's id too).
        if record is None or record.task_id != task_id or record.callback_token is None:
            return None
        if not hmac.compare_digest(record.callback_token.encode(), token.encode("utf-8", "replace")):
            return None
        return record

    def called_back(self, task_id: str) -> None:
        """A valid callback for the running task ``task_id``: its loop reads the status now, or, inside the
        gap since the last such wake, once when the gap ends (however many more come meanwhile)."""
        wake = self._wake(task_id)
        now = self._clock.monotonic()
        gap = self._policy.callback_min_gap_s
        if now - wake.last >= gap:
            self._called(task_id, wake)
        elif not wake.deferred and self.tg is not None:
            # Not dropped (it may be the completion's own callback), but kept for the end of the gap.
            wake.deferred = True
            self.tg.start_soon(self._wake_later, task_id, wake.last + gap - now)

    def _called(self, task_id: str, wake: _Wake) -> None:
        wake.last = self._clock.monotonic()
        wake.event.set()
        log.info("task %s: RunAPI called back; reading its status", task_id)

    async def _wake_later(self, task_id: str, delay: float) -> None:
        await self._clock.sleep(delay)
        wake = self._wake(task_id)
        wake.deferred = False
        tracked = self._registry.held(task_id)
        if tracked is not None and not tracked.record.terminal:
            self._called(task_id, wake)

    # -- the poll loop's sleep -------------------------------------------------------------------------
    def wake_now(self, task_id: str) -> None:
        """End the task's poll loop's sleep now (or its next one, if it is not asleep)."""
        self._wake(task_id).event.set()

    async def nap(self, task_id: str, seconds: float) -> bool:
        """Sleep ``seconds``, less if a callback (or :meth:`wake_now`) wakes the task; True when one did."""
        wake = self._wake(task_id)
        if not await wait_for_event(self._clock, wake.event, seconds):
            return False
        wake.event = anyio.Event()
        return True

    def _wake(self, task_id: str) -> _Wake:
        wake = self._wakes.get(task_id)
        if wake is None:
            wake = self._wakes[task_id] = _Wake()
        return wake


def hide_callback_token(record: TaskRecord, exc: RunAPIError) -> None:
    """Cut the task's webhook secret out of an error RunAPI answered to its create (a 422 may quote the
    body's ``callback_url``): the error reaches the caller, the log and the store."""
    token = record.callback_token
    if token and token in exc.message:
        exc.message = exc.message.replace(token, "***")
