"""Lease claims (``tasks.claims.LeaseClaims``) on a clock the test moves: what this process polls when its
leases cannot be renewed, and when a renewal races a claim of the same task.

The leases are ``LocalLeases`` (the embedded stores' own) behind a switch that makes the database "away";
the claims' timer and the leases' deadlines run on one ``FakeClock``, as they run on the database's clock
and real time in production.
"""

from __future__ import annotations

from collections.abc import Collection

import anyio
import pytest

from runapi_mcp.tasks import MemoryTaskStore, TaskRecord
from runapi_mcp.tasks.claims import LeaseClaims
from runapi_mcp.tasks.leases import LocalLeases
from runapi_mcp.tasks.store import StoreError
from tests.support import FakeClock

pytestmark = pytest.mark.anyio

TTL_S = 9.0


def _record(n: int) -> TaskRecord:
    return TaskRecord.model_validate(
        {
            "task_id": f"task-{n:04d}",
            "upstream_id": f"up-{n}",
            "idempotency_key": f"key-{n}",
            "status": "processing",
            "model": "gpt-image-2",
            "service": "gpt_image_2",
            "action": "text_to_image",
            "route": "/api/v1/gpt_image_2/text_to_image",
            "created_at": 1_000_000.0 + n,
        }
    )


class SwitchedLeases:
    """``LocalLeases`` whose database can be made away (every call raises ``StoreError``), and whose renewals
    can be held in flight (``hold_renewals``) until the test lets them go."""

    def __init__(self, leases: LocalLeases) -> None:
        self._leases = leases
        self.away = False
        self.hold_renewals: anyio.Event | None = None
        self.renewing = anyio.Event()  # set when a held renewal has been answered and waits to return

    def _check(self) -> None:
        if self.away:
            raise StoreError("the task store at postgresql://db failed: connection refused")

    async def claim(
        self, holder: str, *, limit: int, ttl_s: float, task_ids: Collection[str] | None = None
    ) -> list[TaskRecord]:
        self._check()
        return await self._leases.claim(holder, limit=limit, ttl_s=ttl_s, task_ids=task_ids)

    async def renew(self, holder: str, task_ids: Collection[str], *, ttl_s: float) -> set[str]:
        self._check()
        kept = await self._leases.renew(holder, task_ids, ttl_s=ttl_s)
        held, self.hold_renewals = self.hold_renewals, None  # the next renewal only
        if held is not None:
            self.renewing.set()
            await held.wait()
        return kept

    async def release(self, holder: str, task_ids: Collection[str] | None = None) -> None:
        self._check()
        await self._leases.release(holder, task_ids)


async def _setup(clock: FakeClock, n: int = 1, *, db: FakeClock | None = None) -> tuple[SwitchedLeases, LeaseClaims, list[TaskRecord]]:
    store = MemoryTaskStore()
    records = [_record(i) for i in range(n)]
    for record in records:
        await store.save(record)
    leases = SwitchedLeases(LocalLeases(store.unfinished, clock=db or clock))
    claims = LeaseClaims(leases, "here", ttl_s=TTL_S, timer=clock)
    return leases, claims, records


async def test_leases_not_renewed_for_a_whole_ttl_are_let_go_and_claimed_again_when_the_store_is_back() -> None:
    """The database is away: renewing fails, and once a whole TTL has passed without a renewal the leases
    have lapsed there (another instance may poll the tasks): this process stops polling them, instead of
    polling on beside the new holder. When the database is back, the periodic claim takes them up again."""
    clock = FakeClock()
    leases, claims, records = await _setup(clock)
    assert [r.task_id for r in await claims.take_up()] == [records[0].task_id]
    lost: list[str] = []
    taken: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(claims.keep, lambda r: taken.append(r.task_id), lost.append)
        await clock.sleeping(1)
        leases.away = True
        await clock.advance(TTL_S / 3)
        await clock.sleeping(1)
        await clock.advance(TTL_S / 3)
        await clock.sleeping(1)
        assert lost == [] and claims.held == {records[0].task_id}  # two failures: the lease still stands
        await clock.advance(TTL_S / 3)
        await clock.sleeping(1)
        assert lost == [records[0].task_id] and claims.held == frozenset()
        leases.away = False
        await clock.advance(TTL_S / 3)
        await clock.sleeping(1)
        assert taken == [records[0].task_id] and claims.held == {records[0].task_id}
        assert lost == [records[0].task_id]  # lost once, taken back once
        tg.cancel_scope.cancel()


async def test_a_task_claimed_again_while_a_renewal_was_under_way_is_kept() -> None:
    """The lease lapsed; the periodic renewal finds it gone, but before its answer is acted on a look here
    claims the task again: the new claim stands (the loop it starts polls on), it is not lost to the stale
    renewal's answer."""
    timer, db = FakeClock(), FakeClock()
    leases, claims, records = await _setup(timer, db=db)
    task = records[0]
    await claims.take_up()
    lost: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(claims.keep, lambda r: None, lost.append)
        await timer.sleeping(1)
        await db.advance(TTL_S + 1)  # the lease ran out on the database's clock
        leases.hold_renewals = anyio.Event()
        held = leases.hold_renewals
        tg.start_soon(timer.advance, TTL_S / 3)
        await leases.renewing.wait()  # the periodic renewal was answered: nothing kept
        assert await claims.claim(task) == task  # a look here claims it again meanwhile
        held.set()
        await timer.sleeping(1)
        assert lost == [] and claims.held == {task.task_id}
        assert await leases.renew("here", [task.task_id], ttl_s=TTL_S) == {task.task_id}
        tg.cancel_scope.cancel()
