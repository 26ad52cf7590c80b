"""The poller on a clock the test moves: when a task is looked at, that a cancelled task is never looked at
again, and that only the tasks this process claims are polled (``TaskClaims``, the seam leases plug into).

The manager runs against the simulator (real HTTP); its clock is a ``FakeClock``, so "no status read for
ten minutes" is proved by moving the clock ten minutes, not by waiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from runapi_mcp.catalog import PreparedRequest, get_catalog
from runapi_mcp.client import RunAPIClient
from runapi_mcp.clock import SYSTEM_CLOCK, Clock
from runapi_mcp.simulator import Simulator
from runapi_mcp.tasks import LOCAL_OWNER, ImageStore, MemoryTaskStore, TaskManager, TaskRecord, TaskStore, current_owner
from runapi_mcp.tasks.changes import FeedGap
from runapi_mcp.tasks.poller import LocalClaims, TaskClaims
from runapi_mcp.tasks.store import StoreError
from tests.support import FAST_POLICY, SIM_KEY, FakeClock, until

pytestmark = pytest.mark.anyio


def _prepared(prompt: str) -> PreparedRequest:
    return get_catalog().prepare("generate", "gpt-image-2", prompt=prompt)


@asynccontextmanager
async def manager_on(
    sim: Simulator, home: Path, store: TaskStore, clock: Clock, claims: TaskClaims | None = None
) -> AsyncIterator[TaskManager]:
    async with RunAPIClient(SIM_KEY, sim.base_url, clock=clock) as client:
        manager = TaskManager(
            client, ImageStore(home / "images"), store, policy=FAST_POLICY, clock=clock, claims=claims
        )
        # The tests call the manager directly, as the local user (what the MCP layer says for a stdio request).
        async with manager.running():
            with current_owner.scope(LOCAL_OWNER):
                yield manager


def status_reads(sim: Simulator, upstream_id: str) -> int:
    return sum(1 for r in sim.requests if r.method == "GET" and r.path.endswith("/" + upstream_id))


async def test_a_task_is_looked_at_when_the_schedule_says_and_never_after_a_cancel(
    sim: Simulator, home: Path
) -> None:
    sim.set_task_outcome(None, "running")  # RunAPI never finishes it on its own
    clock = FakeClock()
    async with manager_on(sim, home, MemoryTaskStore(), clock) as manager:
        record = await manager.submit(_prepared("held"), prompt="held")
        upstream = record.upstream_id
        assert record.status == "pending" and upstream is not None
        await clock.sleeping(1)  # the poll loop, asleep until its early look
        assert clock.wakes() == [pytest.approx(clock.monotonic() + FAST_POLICY.early_check_s)]
        assert await clock.advance(FAST_POLICY.early_check_s * 0.9) == 0
        assert status_reads(sim, upstream) == 0
        assert await clock.advance(FAST_POLICY.early_check_s * 0.1) == 1
        await until(lambda: manager.stats(record.task_id)["polls"] == 1 and len(clock.wakes()) == 1, "one look")
        assert status_reads(sim, upstream) == 1

        cancelled = await manager.cancel(record.task_id, "cancelled by the test")
        assert cancelled.status == "cancelled"
        await until(lambda: not clock.wakes(), "the poll loop ended")  # woken by the cancel, not by the clock
        assert await clock.advance(FAST_POLICY.give_up_s * 2) == 0
        sim.set_task_outcome(upstream, "completed")  # RunAPI finishes it after all: still cancelled here
        assert await clock.advance(60.0) == 0
        assert status_reads(sim, upstream) == 1
        assert (await manager.get(record.task_id)).status == "cancelled"
        assert manager.stats(record.task_id)["polls"] == 1


class Claims:
    """This process's claims, granted for ``granted`` only (another process polls the rest); what was asked
    is kept in ``asked``."""

    def __init__(self, store: TaskStore, granted: set[str]) -> None:
        self._local = LocalClaims(store)
        self.granted = granted
        self.asked: list[tuple[str, str]] = []
        self.handed_over: list[TaskRecord] = []  # given to the manager by ``keep`` once ``hand_over`` is set
        self.hand_over = anyio.Event()

    async def take_up(self) -> list[TaskRecord]:
        taken = [r for r in await self._local.take_up() if r.task_id in self.granted]
        self.asked += [("take_up", r.task_id) for r in taken]
        return taken

    async def claim(self, record: TaskRecord) -> TaskRecord | None:
        self.asked.append(("claim", record.task_id))
        return record if record.task_id in self.granted else None

    async def release(self, record: TaskRecord) -> None:
        self.asked.append(("release", record.task_id))

    async def keep(self, take: Callable[[TaskRecord], None], lose: Callable[[str], None]) -> None:
        await self.hand_over.wait()
        for record in self.handed_over:
            self.granted.add(record.task_id)
            take(record)


async def test_only_the_tasks_this_process_claims_are_polled(sim: Simulator, home: Path) -> None:
    store = MemoryTaskStore()
    sim.set_task_outcome(None, "running")
    async with manager_on(sim, home, store, SYSTEM_CLOCK) as first:
        record = await first.submit(_prepared("claimed elsewhere"), prompt="claimed elsewhere")
    task_id, upstream = record.task_id, record.upstream_id
    assert upstream is not None
    reads = status_reads(sim, upstream)

    # Another process holds it: not taken up at start, and asking for it shows the stored record, unpolled.
    clock = FakeClock()
    elsewhere = Claims(store, granted=set())
    async with manager_on(sim, home, store, clock, elsewhere) as second:
        assert (await second.get(task_id)).status == "pending"
        await until(lambda: elsewhere.asked == [("claim", task_id)], "the claim was asked for")
        assert await clock.advance(FAST_POLICY.give_up_s) == 0  # no loop sleeps: none runs
        assert status_reads(sim, upstream) == reads
        assert second.stats(task_id)["polls"] == 0

    # This process holds it: taken up at start, polled to the end, and its claim released then.
    sim.set_task_outcome(upstream, "completed")
    here = Claims(store, granted={task_id})
    async with manager_on(sim, home, store, SYSTEM_CLOCK, here) as third:
        with anyio.fail_after(10):
            done = await third.wait(task_id, 10)
        assert done.status == "completed" and done.images[0].path, done
        await until(lambda: ("release", task_id) in here.asked, "the claim was released")
    assert here.asked == [("take_up", task_id), ("claim", task_id), ("release", task_id)]


async def test_a_task_claimed_after_the_start_is_taken_up(sim: Simulator, home: Path) -> None:
    """What a lease taken over from an instance that stopped looks like to the manager: ``keep`` hands it
    the task while it runs, and it is polled to the end."""
    store = MemoryTaskStore()
    sim.set_task_outcome(None, "completed")
    async with manager_on(sim, home, store, SYSTEM_CLOCK, Claims(store, granted=set())) as first:
        record = await first.submit(_prepared("taken over"), prompt="taken over")  # not polled: not claimed
    assert record.upstream_id is not None and record.status == "pending"
    claims = Claims(store, granted=set())
    async with manager_on(sim, home, store, SYSTEM_CLOCK, claims) as second:
        assert claims.asked == []  # nothing taken up at start
        claims.handed_over = [record]
        claims.hand_over.set()
        await until(lambda: ("release", record.task_id) in claims.asked, "polled to the end")
        done = await second.get(record.task_id)
    assert done.status == "completed" and done.images[0].path, done
    assert claims.asked == [("claim", record.task_id), ("release", record.task_id)]


class AwayClaims(Claims):
    """Claims over a shared store that is away: every claim fails with the store's error."""

    async def claim(self, record: TaskRecord) -> TaskRecord | None:
        self.asked.append(("claim", record.task_id))
        raise StoreError("the task store at postgresql://db failed: connection refused")


async def test_claims_that_fail_cost_the_polling_for_now_never_the_manager(sim: Simulator, home: Path) -> None:
    """A store that cannot be reached when a task is claimed: the new task is still created (it is stored,
    and its caller is answered), it is not polled for now, and the manager runs on for every other call."""
    store = MemoryTaskStore()
    sim.set_task_outcome(None, "running")
    away = AwayClaims(store, granted=set())
    async with manager_on(sim, home, store, SYSTEM_CLOCK, away) as manager:
        record = await manager.submit(_prepared("store away"), prompt="store away")
        assert record.status == "pending" and record.upstream_id is not None
        await until(lambda: away.asked.count(("claim", record.task_id)) == 2, "the poll loop's claim tried")
        assert (await manager.get(record.task_id)).status == "pending"  # the manager still answers
        second = await manager.submit(_prepared("and again"), prompt="and again")
        assert second.upstream_id is not None and sim.tasks_created == 2
        assert manager.stats(record.task_id)["polls"] == 0


class SharedMemoryStore(MemoryTaskStore):
    """A memory store the manager takes for one other processes share (it follows its change feed), whose
    reads of the tasks in ``unreadable`` fail as a database's would."""

    def __init__(self) -> None:
        super().__init__()
        self.unreadable: set[str] = set()

    @property
    def shared(self) -> bool:
        return True

    async def get(self, task_id: str) -> TaskRecord | None:
        if task_id in self.unreadable:
            raise StoreError("the task store at postgresql://db failed: canceling statement due to statement timeout")
        return await super().get(task_id)


async def test_a_gap_in_the_change_feed_reads_every_held_task_again_even_when_one_read_fails(
    sim: Simulator, home: Path
) -> None:
    """After a gap in the feed the follower reads again every unfinished task held here: one that cannot be
    read (a statement timeout) costs that task's re-read, not the others', whose missed changes still reach
    the listeners."""
    store = SharedMemoryStore()
    sim.set_task_outcome(None, "running")
    async with manager_on(sim, home, store, SYSTEM_CLOCK, Claims(store, granted=set())) as first:
        one = await first.submit(_prepared("one"), prompt="one")
        two = await first.submit(_prepared("two"), prompt="two")
    async with manager_on(sim, home, store, SYSTEM_CLOCK, Claims(store, granted=set())) as manager:
        for record in (one, two):  # held here, polled elsewhere (not claimed)
            assert (await manager.get(record.task_id)).status == "pending"
        told: list[TaskRecord] = []

        async def listener(record: TaskRecord) -> None:
            told.append(record)

        manager.add_listener(listener)
        # Another instance's writes, whose notifications were lost (made here they carry this feed's origin,
        # which the follower passes over: only the gap brings them in).
        for record in (one, two):
            await store.save(record.progressed("processing", 0.5, at=record.updated_at + 1))
        store.unreadable = {one.task_id}
        store.changes.publish(FeedGap("the change feed's database connection dropped and was opened again"))
        await until(lambda: [r.task_id for r in told] == [two.task_id], "the second task read again")
        assert (await manager.get(two.task_id)).progress == 0.5


class Retaken(Claims):
    """Every claim granted; ``keep`` tells the manager its claim on each task handed over was lost and, in
    the same breath, that it was claimed again (a renewal that came too late, then the periodic claim)."""

    async def claim(self, record: TaskRecord) -> TaskRecord | None:
        self.asked.append(("claim", record.task_id))
        return record

    async def keep(self, take: Callable[[TaskRecord], None], lose: Callable[[str], None]) -> None:
        await self.hand_over.wait()
        for record in self.handed_over:
            lose(record.task_id)
            take(record)


async def test_a_task_lost_and_claimed_again_before_its_loop_stopped_is_polled_on(sim: Simulator, home: Path) -> None:
    """A claim lost, then taken again before the task's loop saw the loss: the old loop stops, and a new one
    polls the task on (held here, it is polled by nobody else)."""
    store = MemoryTaskStore()
    sim.set_task_outcome(None, "running")
    clock = FakeClock()
    claims = Retaken(store, granted=set())
    async with manager_on(sim, home, store, clock, claims) as manager:
        record = await manager.submit(_prepared("retaken"), prompt="retaken")
        upstream = record.upstream_id
        assert upstream is not None
        await clock.sleeping(1)  # its loop, asleep until its next look
        assert claims.asked == [("claim", record.task_id)] * 2  # the create's, the loop's
        claims.handed_over = [record]
        claims.hand_over.set()
        await until(lambda: claims.asked.count(("claim", record.task_id)) == 3, "a new loop claimed the task")
        await clock.sleeping(1)
        reads = status_reads(sim, upstream)
        assert await clock.advance(FAST_POLICY.coarse_max_s * 2) > 0
        await until(lambda: status_reads(sim, upstream) > reads, "the task polled on")
