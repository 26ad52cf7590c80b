"""Claims over the store's leases: several server instances on one store, each task polled by one of them.

:class:`LeaseClaims` is the poller's ``TaskClaims`` when the store is shared (PostgreSQL): a task is polled
by the instance that holds its lease (``store.leases``), under an id of that instance's own
(:func:`new_instance_id`). The lease lasts ``ttl_s`` (``RUNAPI_MCP_LEASE_TTL_S``) and is renewed every
third of it, so a renewal may fail twice before the lease lapses. An instance that dies (or hangs, or loses
its database) stops renewing: its tasks are due at the deadline, and the next periodic claim of another
instance, at most a third of the TTL later, takes them up, as a restart would. A task still "submitting"
(its create's answer never came) is created again with its idempotency key, so RunAPI makes it once.

A task whose loop gave up (RunAPI has not finished it for a long while) stays claimed without being polled,
as on a single instance: a look from a user or a callback polls it again here, and it passes to another
instance only if this one stops. Released at once: a task that ended, and every claim when the manager
stops cleanly (another instance takes them up at its next periodic claim).

Leases expire on the database's clock, so they are renewed on real time (``timer``: the system's clock), not
on the manager's injected clock, which a test may hold still. When renewing fails (the database is away, or
unreachable from here only) for a whole TTL, every lease has lapsed on the database's clock: this process
lets every task go (their loops stop at their next look) rather than poll on while another instance, which
can reach the database, takes them over; its periodic claim takes them up again when the database is back.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
from collections.abc import Callable

import anyio

from runapi_mcp.clock import SYSTEM_CLOCK, Clock
from runapi_mcp.tasks.leases import TaskLeases
from runapi_mcp.tasks.records import TaskRecord
from runapi_mcp.tasks.store import StoreError, needs_taking_up
from runapi_mcp.wording import count

log = logging.getLogger("runapi_mcp.tasks")

DEFAULT_LEASE_TTL_S = 10.0
CLAIM_BATCH = 100  # tasks taken up in one claim (at start, and at each periodic claim)
_RELEASE_DEADLINE_S = 5.0  # the clean stop's release of every claim: a database that does not answer lets them lapse


def new_instance_id() -> str:
    """This process's id as a lease holder: host, process and a random part (a restarted process, or one
    of several on a host with the same pid in different containers, is a new holder)."""
    host = socket.gethostname().split(".")[0][:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class LeaseClaims:
    """``poller.TaskClaims`` over ``leases``, held by ``holder`` for ``ttl_s`` at a time."""

    def __init__(
        self, leases: TaskLeases, holder: str, *, ttl_s: float = DEFAULT_LEASE_TTL_S, timer: Clock = SYSTEM_CLOCK
    ) -> None:
        self._leases = leases
        self.holder = holder
        self.ttl_s = ttl_s
        self._timer = timer  # real time, as the database's (see the module's docstring)
        # The tasks this process holds (polled, or idle after giving up), each with the number of the claim
        # that took it: a renewal's answer about an earlier claim must not cost a later one.
        self._held: dict[str, int] = {}
        self._claims = itertools.count()

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    async def take_up(self) -> list[TaskRecord]:
        return self._taken(await self._leases.claim(self.holder, limit=CLAIM_BATCH, ttl_s=self.ttl_s))

    async def claim(self, record: TaskRecord) -> TaskRecord | None:
        task_id = record.task_id
        if task_id in self._held:
            if task_id in await self._leases.renew(self.holder, [task_id], ttl_s=self.ttl_s):
                return record
            self._held.pop(task_id, None)  # lapsed: claimed again below if nobody has taken it meanwhile
        claimed = self._taken(await self._leases.claim(self.holder, limit=1, ttl_s=self.ttl_s, task_ids=[task_id]))
        return claimed[0] if claimed else None

    async def release(self, record: TaskRecord) -> None:
        if record.task_id not in self._held:
            return  # lost meanwhile: not this process's to release
        if needs_taking_up(record):
            return  # its loop gave up: held, idle, until asked for again here or this process stops
        self._held.pop(record.task_id, None)
        # The write that ended the task ended its lease too; this covers one that did not reach the store
        # (another instance then takes the task up and finishes it).
        await self._leases.release(self.holder, [record.task_id])

    async def keep(self, take: Callable[[TaskRecord], None], lose: Callable[[str], None]) -> None:
        renewed = self._timer.monotonic()  # when the last renewal that went through was sent
        try:
            while True:
                await self._timer.sleep(self.ttl_s / 3)
                try:
                    sent = self._timer.monotonic()
                    await self._renew(lose)
                    renewed = sent
                    for record in self._taken(
                        await self._leases.claim(self.holder, limit=CLAIM_BATCH, ttl_s=self.ttl_s)
                    ):
                        log.info("task %s: taken over (its holder stopped renewing its lease)", record.task_id)
                        take(record)
                except StoreError as exc:  # the database is away: polling goes on, and renewing is tried again
                    log.warning("could not renew this instance's task leases: %s", exc)
                except Exception:  # a bug here must not end the manager (the claims lapse, others take them)
                    log.exception("renewing this instance's task leases failed")
                if self._held and self._timer.monotonic() - renewed >= self.ttl_s:
                    self._lapsed(lose)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_RELEASE_DEADLINE_S):
                try:
                    await self._leases.release(self.holder)
                except StoreError as exc:
                    log.warning("could not release this instance's task leases (they lapse): %s", exc)
                self._held.clear()

    async def _renew(self, lose: Callable[[str], None]) -> None:
        if not self._held:
            return
        asked = dict(self._held)
        kept = await self._leases.renew(self.holder, asked, ttl_s=self.ttl_s)
        for task_id, claim in asked.items():
            # Neither released nor claimed again (a look here, after the lease ran out) while the renewal
            # was under way: that claim's lease is this renewal's business no more.
            if task_id not in kept and self._held.get(task_id) == claim:
                del self._held[task_id]
                lose(task_id)

    def _lapsed(self, lose: Callable[[str], None]) -> None:
        """No renewal went through for a whole TTL: every lease held here has run out, and another instance
        may have claimed the task (or will): none is polled here any more."""
        lapsed, self._held = self._held, {}
        log.warning(
            "this instance's task leases lapsed (not renewed for %.0f s): it stops polling %s until it can "
            "claim them again", self.ttl_s, count(len(lapsed), "task"),
        )
        for task_id in lapsed:
            lose(task_id)

    def _taken(self, records: list[TaskRecord]) -> list[TaskRecord]:
        for record in records:
            self._held[record.task_id] = next(self._claims)
        return records
