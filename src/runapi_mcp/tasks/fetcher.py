"""The output fetcher: a finished task's pictures, downloaded into the library and copied to ``save_as``.

Downloads have their own limiter, so image hosts that trickle bytes never hold the slots that creates and
polls need, and each output has an overall deadline. The client's retry policy is the only retry layer: the
fetcher never multiplies it. An output that did not download keeps its RunAPI URL and is tried again when
the task is asked for (:meth:`OutputFetcher.refetch`), not more often than every ``REFETCH_AFTER_S``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from runapi_mcp.client import RunAPIClient, RunAPIError, TaskInfo
from runapi_mcp.clock import Clock
from runapi_mcp.tasks.images import ImageFileError, ImageNotFoundError, ImageStore
from runapi_mcp.tasks.records import ImageRecord
from runapi_mcp.tasks.registry import TaskRegistry, Tracked
from runapi_mcp.tasks.saving import SaveAsError, write_copy
from runapi_mcp.tasks.schedule import PollPolicy
from runapi_mcp.wording import count

log = logging.getLogger("runapi_mcp.tasks")

# A completed task whose outputs did not all download is tried again when asked for, but not more
# often than this: a host that is down should not be hammered by every get_task.
REFETCH_AFTER_S = 10.0


@dataclass
class _Fetches:
    """One task's downloads: one round at a time, and when the last one started."""

    lock: anyio.Lock = field(default_factory=anyio.Lock)
    last: float = -math.inf  # monotonic time outputs were last downloaded (or tried)


class OutputFetcher:
    """Downloads the outputs of finished tasks (side by side, under a limiter) and writes their copies."""

    def __init__(
        self,
        client: RunAPIClient,
        images: ImageStore,
        registry: TaskRegistry,
        clock: Clock,
        policy: PollPolicy,
        *,
        max_concurrent_downloads: int = 16,
        save_dirs: Sequence[Path] = (),
    ) -> None:
        self._client = client
        self._images = images
        self._registry = registry
        self._clock = clock
        self._policy = policy
        # Downloads stream to disk (little memory each) but may meet slow hosts: a limiter of their own,
        # wider than the one creates and polls share.
        self._downloads = anyio.CapacityLimiter(max_concurrent_downloads)
        self._fetches: dict[str, _Fetches] = {}  # by the server's task id
        # Where save_as copies may be written (RUNAPI_MCP_ALLOWED_DIRS): read when each copy is written, so a
        # task taken up after a restart is held to the directories allowed then.
        self.save_dirs: tuple[Path, ...] = tuple(save_dirs)

    async def complete(self, tracked: Tracked, info: TaskInfo) -> None:
        """RunAPI reports the task completed with ``info``: its outputs are fetched and copied, then the
        task is completed, with a note on any output that is missing."""
        record = tracked.record
        urls = list(dict.fromkeys(image.url for image in info.images))  # in order, each once
        listed = max(info.listed_images, len(urls))
        cap = record.max_outputs if record.max_outputs is not None else len(urls)
        notes: list[str] = []
        if listed > min(cap, len(urls)):
            distinct = f" ({len(urls)} distinct)" if len(urls) < listed else ""
            notes.append(
                f"RunAPI listed {listed} images{distinct}; kept the first {min(cap, len(urls))} "
                f"(this model makes at most {cap})"
            )
        urls = urls[:cap]
        images = await self._download_all(
            tracked, [self._images.undownloaded(record.task_id, i, u) for i, u in enumerate(urls)]
        )
        # Before the task reads "completed": whoever it wakes sees where the copies went.
        images = await self._save_copies(tracked, images)
        completed = tracked.record.completed(images, urls, _download_note(images, notes), at=self._clock.time())
        await self._registry.commit(tracked, completed)

    def wants_refetch(self, tracked: Tracked) -> bool:
        """A completed task with outputs not in the library, last tried long enough ago."""
        return (
            tracked.record.missing_outputs
            and self._clock.monotonic() - self._fetch(tracked).last >= REFETCH_AFTER_S
        )

    async def refetch(self, tracked: Tracked) -> None:
        """Download again the outputs of a completed task that are not in the library."""
        fetches = self._fetch(tracked)
        if fetches.lock.locked():
            return  # another call is downloading them right now: no second download of the same files
        async with fetches.lock:
            if not self.wants_refetch(tracked):  # it may have finished while this call looked
                return
            images = await self._download_all(tracked, list(tracked.record.images))
            images = await self._save_copies(tracked, images)
            refetched = tracked.record.refetched(images, _download_note(images, []), at=self._clock.time())
            await self._registry.commit(tracked, refetched)

    def _fetch(self, tracked: Tracked) -> _Fetches:
        fetches = self._fetches.get(tracked.task_id)
        if fetches is None:
            fetches = self._fetches[tracked.task_id] = _Fetches()
        return fetches

    async def _download_all(self, tracked: Tracked, images: list[ImageRecord]) -> list[ImageRecord]:
        """Every output not yet in the library downloaded side by side; a failure is noted on its image."""
        results = list(images)

        async def fetch(n: int, image: ImageRecord) -> None:
            results[n] = await self._download(tracked, image)

        self._fetch(tracked).last = self._clock.monotonic()
        async with anyio.create_task_group() as tg:
            for n, image in enumerate(images):
                if image.path is None and image.url:
                    tg.start_soon(fetch, n, image)
        return results

    async def _save_copies(self, tracked: Tracked, images: list[ImageRecord]) -> list[ImageRecord]:
        """The save_as copy of every picture in the library that has none yet (each is tried once).

        A copy that cannot be written is noted on its image (``save_error``); it never fails the task."""
        save_as = tracked.record.save_as
        if save_as is None:
            return images
        results = list(images)
        for n, image in enumerate(images):
            if image.path is None or image.saved_as is not None or image.save_error is not None:
                continue
            try:
                saved = await anyio.to_thread.run_sync(
                    write_copy, self._images, image, save_as, len(images), self.save_dirs
                )
            except (SaveAsError, ImageNotFoundError) as exc:
                reason = str(exc)
            except Exception as exc:
                log.exception("task %s: copying image %d to save_as failed unexpectedly", tracked.task_id, image.index)
                reason = f"internal error while copying ({type(exc).__name__})"
            else:
                log.info("task %s: image %d copied to %s", tracked.task_id, image.index, saved)
                results[n] = image.model_copy(update={"saved_as": str(saved)})
                continue
            log.warning("task %s: image %d not copied to save_as: %s", tracked.task_id, image.index, reason)
            results[n] = image.model_copy(update={"save_error": reason})
        return results

    async def _download(self, tracked: Tracked, image: ImageRecord) -> ImageRecord:
        assert image.url is not None
        deadline = self._policy.download_deadline_s
        try:
            async with self._downloads:
                tracked.upstream_requests += 1
                # The client keeps the deadline; this is a backstop. Both are on the event loop's clock, not
                # the injected one: they bound real I/O, which a test's clock does not speed up.
                with anyio.fail_after(deadline + 5):
                    saved = await self._images.download(
                        self._client, tracked.record, image.index, image.url, deadline_s=deadline
                    )
            return saved.model_copy(update={"error": None})
        except (RunAPIError, ImageFileError) as exc:
            reason = str(exc)
        except TimeoutError:
            reason = f"the image host did not deliver within {deadline:.0f} s"
        except OSError as exc:
            reason = f"could not save it in the library ({exc.strerror or type(exc).__name__})"
        except Exception as exc:
            log.exception("task %s: downloading image %d failed unexpectedly", tracked.task_id, image.index)
            reason = f"internal error while downloading ({type(exc).__name__})"
        log.warning("task %s: image %d not downloaded: %s", tracked.task_id, image.index, reason)
        return ImageRecord.model_validate({**image.model_dump(), "error": reason})


def _download_note(images: list[ImageRecord], notes: list[str]) -> str | None:
    """The task's note about its outputs: what is missing and why (None when all is well)."""
    missing = [image for image in images if image.path is None]
    parts = list(notes)
    if missing:
        parts.append(
            f"downloaded {len(images) - len(missing)} of {count(len(images), 'image')}; "
            + "; ".join(f"image {image.index}: {image.error or 'not downloaded'}" for image in missing)
            + "; the RunAPI URLs are kept: call get_task again to retry"
        )
    return "; ".join(parts) or None
