"""Previews of a task's images under one process-wide decode budget.

Decoding costs memory by pixels, not by file size (Pillow keeps 4 bytes a pixel for RGB and RGBA alike),
so the budget counts pixels. Each image is first measured from its header (cheap, no budget); a fresh
preview then waits for its cost in :data:`DECODE_BUDGET` before it is handed to a worker thread, so
however many images of however many tasks want previews at once, the decodes in flight stay within
64 MP together. The cost of an image that may have alpha counts double: Pillow resizes RGBA through a
premultiplied full-size copy (measured: one 36 MP RGBA preview peaks ~300 MB over the baseline). So the
worst case is about 256 MB of decoded pixels plus small thumbnails, well under 1 GB of RSS. Images over
``PREVIEW_MAX_PIXELS`` (40 MP) are never decoded at all: they are saved and linked, and the caller is
told why.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from runapi_mcp.tasks.images import ImageStore, Preview, PreviewUnavailableError
from runapi_mcp.tasks.records import ImageRecord, TaskRecord

log = logging.getLogger("runapi_mcp.previews")

DECODE_BUDGET_PIXELS = 64_000_000


@dataclass(frozen=True)
class PreviewSkipped:
    """No preview for this image; ``reason`` is a sentence to show the caller."""

    image_id: str
    reason: str


class PixelBudget:
    """A weighted async semaphore counted in pixels, first come first served.

    A request larger than the whole budget still runs, alone. Use it from one event loop at a time.
    """

    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError("the pixel budget must be positive")
        self.total = total
        self._used = 0
        self._waiting: deque[tuple[int, anyio.Event]] = deque()

    @property
    def in_use(self) -> int:
        return self._used

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Wait until ``pixels`` fit beside what is already decoding, and keep them for the block."""
        need = max(1, min(int(pixels), self.total))
        await self._acquire(need)
        try:
            yield
        finally:
            self._release(need)

    async def _acquire(self, need: int) -> None:
        if not self._waiting and self._used + need <= self.total:
            self._used += need
            return
        entry = (need, anyio.Event())
        self._waiting.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():
                self._release(need)  # granted just as the wait was cancelled: hand it back
            else:
                self._waiting.remove(entry)
                self._grant()  # a big request leaving the head of the queue may let smaller ones in
            raise

    def _release(self, need: int) -> None:
        self._used -= need
        self._grant()

    def _grant(self) -> None:
        # Strictly in order: a large request at the head is never starved by a stream of small ones.
        while self._waiting and self._used + self._waiting[0][0] <= self.total:
            need, event = self._waiting.popleft()
            self._used += need
            event.set()


DECODE_BUDGET = PixelBudget(DECODE_BUDGET_PIXELS)


async def make_preview(
    store: ImageStore,
    image: ImageRecord,
    max_edge: int,
    max_bytes: int,
    *,
    budget: PixelBudget | None = None,
) -> Preview | PreviewSkipped:
    """One image's preview (cached or fresh), or the reason there is none. Never raises for a bad file."""
    budget = budget or DECODE_BUDGET
    try:
        plan = await anyio.to_thread.run_sync(store.plan_preview, image, max_edge, max_bytes)
        if isinstance(plan, Preview):
            return plan
        # Acquired here, before the worker thread starts: a thread that waited for memory would hold a
        # worker slot and could not be cancelled.
        async with budget.hold(plan.cost):
            return await anyio.to_thread.run_sync(store.render_preview, image, max_edge, max_bytes, plan.pixels)
    except PreviewUnavailableError as exc:
        return PreviewSkipped(image.id, exc.reason)
    except Exception as exc:  # a preview is optional: whatever went wrong, the task result still goes out
        log.warning("could not make a preview of %s: %r", image.id, exc)
        return PreviewSkipped(image.id, f"the preview failed ({exc.__class__.__name__}); the file is kept")


async def make_previews(
    store: ImageStore,
    record: TaskRecord,
    max_edge: int,
    budget_bytes: int,
    *,
    budget: PixelBudget | None = None,
) -> list[Preview | PreviewSkipped]:
    """A preview or a reason for each of ``record.images``, in order.

    ``budget_bytes`` is shared by the saved images (each gets an equal part); the decodes run side by
    side as far as the pixel budget lets them.
    """
    saved = [image for image in record.images if image.path]
    per_image = budget_bytes // max(1, len(saved))
    out: list[Preview | PreviewSkipped] = [
        PreviewSkipped(image.id, "not downloaded; use the RunAPI URL") for image in record.images
    ]

    async def make(n: int, image: ImageRecord) -> None:
        out[n] = await make_preview(store, image, max_edge, per_image, budget=budget)

    async with anyio.create_task_group() as tg:
        for n, image in enumerate(record.images):
            if image.path:
                tg.start_soon(make, n, image)
    return out
