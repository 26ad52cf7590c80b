"""The poller on a clock the test moves: when a task is looked at, that a cancelled task is never looked at
again, and that only the tasks this process claims are polled (``TaskClaims``, the seam leases plug into).

The manager runs against the simulator (real HTTP); its clock is a ``FakeClock``, so "no status read for
ten minutes" is proved by moving the clock ten minutes, not by waiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from runapi_mcp.catalog import PreparedRequest, get_catalog
from runapi_mcp.client import RunAPIClient
from runapi_mcp.clock import SYSTEM_CLOCK, Clock
from runapi_mcp.simulator import Simulator
from runapi_mcp.tasks import LOCAL_OWNER, ImageStore, MemoryTaskStore, TaskManager, TaskRecord, TaskStore, current_owner
from runapi_mcp.tasks.changes import FeedGap, TaskChange
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
    """A memory store the manager takes for one other processes share (it follows its change feed), read as
    a database would be: the records of the tasks in ``undecodable`` cannot be decoded (a read leaves them
    out, as the SQL stores do), a read including a task in ``timing_out`` fails as a whole (a statement
    timeout). Each read's ids are kept in ``reads``; a batch read waits for ``gate`` while it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.undecodable: set[str] = set()
        self.timing_out: set[str] = set()
        self.reads: list[tuple[str, ...]] = []
        self.gate: anyio.Event | None = None
        self.reading = anyio.Event()  # set once a batch read waits at the gate

    @property
    def shared(self) -> bool:
        return True

    def _read(self, task_ids: Collection[str]) -> None:
        self.reads.append(tuple(sorted(task_ids)))
        if self.timing_out.intersection(task_ids):
            raise StoreError("the task store at postgresql://db failed: canceling statement due to statement timeout")

    async def get(self, task_id: str) -> TaskRecord | None:
        self._read([task_id])
        return None if task_id in self.undecodable else await super().get(task_id)

    async def get_many(self, task_ids: Collection[str]) -> dict[str, TaskRecord]:
        self._read(task_ids)
        if self.gate is not None:
            gate, self.gate = self.gate, None
            self.reading.set()
            await gate.wait()
        found = await super().get_many(task_ids)
        return {task_id: record for task_id, record in found.items() if task_id not in self.undecodable}


async def held_elsewhere(sim: Simulator, home: Path, store: SharedMemoryStore, prompts: list[str]) -> list[TaskRecord]:
    """Tasks submitted by a manager now gone, polled by another instance (never claimed here)."""
    sim.set_task_outcome(None, "running")
    async with manager_on(sim, home, store, SYSTEM_CLOCK, Claims(store, granted=set())) as first:
        return [await first.submit(_prepared(prompt), prompt=prompt) for prompt in prompts]


async def changed_elsewhere(store: SharedMemoryStore, records: list[TaskRecord], progress: float) -> None:
    """Another instance's writes, whose notifications were lost (made here they carry this feed's origin,
    which the follower passes over: only a gap brings them in)."""
    for record in records:
        await store.save(record.progressed("processing", progress, at=record.updated_at + progress))


async def test_a_gap_in_the_change_feed_reads_every_held_task_again_at_once_even_when_one_cannot_be_read(
    sim: Simulator, home: Path
) -> None:
    """After a gap in the feed the follower reads again every unfinished task held here, in one store call:
    a record that cannot be decoded costs that task's re-read, not the others', whose missed changes still
    reach the listeners; a batch read that fails as a whole is made again one task at a time, where one
    that fails (a statement timeout) costs that task only."""
    store = SharedMemoryStore()
    tasks = await held_elsewhere(sim, home, store, ["one", "two", "three"])
    one, two, three = (record.task_id for record in tasks)
    async with manager_on(sim, home, store, SYSTEM_CLOCK, Claims(store, granted=set())) as manager:
        for record in tasks:  # held here, polled elsewhere (not claimed)
            assert (await manager.get(record.task_id)).status == "pending"
        told: list[TaskRecord] = []

        async def listener(record: TaskRecord) -> None:
            told.append(record)

        manager.add_listener(listener)
        await changed_elsewhere(store, tasks, 0.5)
        store.undecodable, store.reads = {one}, []
        store.changes.publish(FeedGap("the change feed's database connection dropped and was opened again"))
        await until(lambda: {r.task_id for r in told} == {two, three}, "the other two tasks read again")
        assert store.reads == [tuple(sorted((one, two, three)))]  # one batched read, no read of each
        assert (await manager.get(two)).progress == 0.5 and (await manager.get(one)).progress is None

        await changed_elsewhere(store, tasks, 0.7)
        told.clear()
        store.undecodable, store.timing_out, store.reads = set(), {two}, []
        store.changes.publish(FeedGap("the change feed's database connection dropped and was opened again"))
        await until(lambda: {r.task_id for r in told} == {one, three}, "the tasks that can be read, read again")
        assert sorted(store.reads) == sorted([tuple(sorted((one, two, three))), (one,), (two,), (three,)])
        assert (await manager.get(one)).progress == 0.7 and (await manager.get(two)).progress == 0.5


async def test_gaps_arriving_while_a_re_read_runs_cost_one_more_re_read_not_one_each(
    sim: Simulator, home: Path
) -> None:
    """A burst of gaps during a re-read (a feed that keeps dropping under load) is followed by one more
    re-read, which sees what any of them missed: the re-reads never pile up behind each other."""
    store = SharedMemoryStore()
    *tasks, last = await held_elsewhere(sim, home, store, ["one", "two", "not held"])
    async with manager_on(sim, home, store, SYSTEM_CLOCK, Claims(store, granted=set())) as manager:
        for record in tasks:
            assert (await manager.get(record.task_id)).status == "pending"
        told: list[str] = []

        async def listener(record: TaskRecord) -> None:
            told.append(record.task_id)

        manager.add_listener(listener)
        batch = tuple(sorted(r.task_id for r in tasks))
        gate = store.gate = anyio.Event()
        store.reads = []
        store.changes.publish(FeedGap("the change feed's database connection dropped and was opened again"))
        with anyio.fail_after(10):
            await store.reading.wait()  # the re-read has begun, and waits
        for n in range(5):
            store.changes.publish(FeedGap(f"the subscriber fell behind again ({n})"))
        await changed_elsewhere(store, tasks, 0.5)  # what the burst hid
        # Then a change another instance made to a task not held here: once it is told, the follower has
        # followed every gap before it.
        store.changes.publish(TaskChange(last.task_id, "pending", origin="another instance"))
        gate.set()
        await until(lambda: last.task_id in told, "the change after the burst followed")
        assert store.reads == [batch, batch, (last.task_id,)]  # the re-read under way, one more, and the change
        for record in tasks:
            assert (await manager.get(record.task_id)).progress == 0.5
