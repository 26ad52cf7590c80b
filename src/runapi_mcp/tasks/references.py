"""Turn what a user calls an image (URL, path, data URI, library URI, task id) into a URL RunAPI can fetch.

Every entry is checked before anything is uploaded, so one bad entry sends nothing. Local files (paths,
file:// URIs) are read through the sandbox: opened once, checked on the descriptor, read in a worker
thread. Library images are read by id through the image store, which applies the same rules.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlparse

from runapi_mcp.catalog import is_http_url
from runapi_mcp.client import RunAPIClient
from runapi_mcp.clock import SYSTEM_CLOCK, Clock
from runapi_mcp.errors import UserError
from runapi_mcp.tasks.images import (
    IMAGE_URI_PREFIX,
    ImageFileError,
    ImageNotFoundError,
    ImageStore,
    inspect_image,
)
from runapi_mcp.tasks.records import ImageRecord, TaskRecord
from runapi_mcp.tasks.sandbox import SandboxError, read_local_file

FORMS = (
    "an http(s) URL, an absolute local path or file:// URI inside the allowed directories, "
    "a data: URI, a runapi://images/{id} URI, or the task id of an earlier task"
)
# RunAPI output URLs live about 7 days; reuse one for a day, upload the local copy after that.
_REUSE_REMOTE_URL_S = 24 * 3600
# An uploaded file's URL is reused for at most this long, and never within this much of its expiry.
UPLOAD_REUSE_MAX_S = 3600.0
UPLOAD_REUSE_MARGIN_S = 600.0
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?),(?P<data>.*)$", re.DOTALL)


def _expand_user(value: str) -> Path:
    """``~`` expanded: reads only the environment, never the disk."""
    return Path(os.path.expanduser(value))


class ImageReferenceError(UserError, ValueError):
    """An ``images`` entry that cannot be used; the message says which one and why."""

    def __init__(self, message: str, *, field: str = "images") -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class _Upload:
    data: bytes
    filename: str
    mime_type: str
    # SHA-256 of ``data`` (hex), taken once when the bytes are checked: the upload cache's key and the
    # upload's idempotency key. Hashing up to 20 MiB again for every look-up would be wasted work.
    digest: str


@dataclass(frozen=True)
class _Ready:
    url: str


@dataclass(frozen=True)
class ImagePlan:
    """Entries checked and read, not yet uploaded: what :meth:`ImageResolver.upload` sends, in order."""

    steps: tuple[_Ready | _Upload, ...]


TaskLookup = Callable[[str], Awaitable[TaskRecord | None]]
ImageLookup = Callable[[str], Awaitable[ImageRecord | None]]


class ImageResolver:
    """Resolves ``images`` entries; uploads local bytes once per content (cached by SHA-256)."""

    def __init__(
        self,
        client: RunAPIClient,
        images: ImageStore,
        *,
        allowed_dirs: Sequence[Path],
        max_bytes: int,
        find_task: TaskLookup,
        find_image: ImageLookup | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._client = client
        self._clock = clock  # when an uploaded URL may be given again (the manager's clock)
        self._images = images
        self._allowed = [Path(p).resolve() for p in allowed_dirs]
        self._max_bytes = max_bytes
        self._find_task = find_task
        # Who may use which library image is the manager's to say (per-user tokens); by default, anyone.
        self._find_image = find_image or images.lookup
        self._uploaded: dict[str, tuple[str, float]] = {}

    async def resolve(self, entries: Sequence[str]) -> list[str]:
        """All entries as fetchable URLs. Validates every entry first; uploads only then."""
        return await self.upload(await self.plan(entries))

    async def plan(self, entries: Sequence[str], *, argument: str = "images") -> ImagePlan:
        """Check and read every entry, uploading nothing: one bad entry refuses the call before any upload.

        ``argument`` is the tool argument the entries came in, for the errors: ``'images[2]'``, or
        ``'image'`` for a tool that takes one image.
        """
        if not entries:
            raise ImageReferenceError(f"'{argument}' needs at least one image: {FORMS}", field=argument)
        single = argument != "images"
        return ImagePlan(
            tuple(
                [
                    await self._plan(f"'{argument}'" if single else f"'{argument}[{i}]'", entry)
                    for i, entry in enumerate(entries)
                ]
            )
        )

    def known_urls(self, plan: ImagePlan) -> list[str] | None:
        """The URLs ``plan`` resolves to when none needs a new upload (URLs, fresh outputs, bytes uploaded
        within the hour); None when some entry's URL only exists after :meth:`upload`."""
        urls: list[str] = []
        for step in plan.steps:
            url = step.url if isinstance(step, _Ready) else self._cached_upload(step)
            if url is None:
                return None
            urls.append(url)
        return urls

    async def upload(self, plan: ImagePlan) -> list[str]:
        """The plan's URLs, uploading the local bytes it holds (each content once)."""
        return [step.url if isinstance(step, _Ready) else await self._upload(step) for step in plan.steps]

    async def _plan(self, where: str, entry: str) -> _Ready | _Upload:
        if not isinstance(entry, str) or not entry.strip():
            raise ImageReferenceError(f"{where} is empty; give {FORMS}")
        value = entry.strip()
        lower = value.lower()
        if lower.startswith(("http://", "https://")):
            if not is_http_url(value):
                raise ImageReferenceError(f"{where} is not a valid http(s) URL with a host: {value[:100]!r}")
            return _Ready(value)
        if lower.startswith("data:"):
            return self._plan_data_uri(where, value)
        if lower.startswith(IMAGE_URI_PREFIX):
            image = await self._find_image(value[len(IMAGE_URI_PREFIX) :])
            if image is None:
                raise ImageReferenceError(f"{where}: no image {value!r} in the library")
            return await self._plan_library_image(where, image)
        if lower.startswith("file://"):
            try:
                parsed = urlparse(value)
            except ValueError:
                raise ImageReferenceError(f"{where} is not a valid file:// URI: {value[:100]!r}") from None
            if parsed.netloc not in ("", "localhost"):
                raise ImageReferenceError(f"{where}: file:// URIs must name a local file, got host {parsed.netloc!r}")
            # Bytes, not text: a file name need not be UTF-8 (the sandbox refuses NULs and the like).
            return await self._plan_path(where, Path(os.fsdecode(unquote_to_bytes(parsed.path))))
        if value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", value):
            return await self._plan_path(where, _expand_user(value))
        record = await self._find_task(value)
        if record is not None:
            if record.status != "completed" or not record.images:
                raise ImageReferenceError(
                    f"{where}: task {value!r} has no image yet (status {record.status}); "
                    "wait for it with get_task(wait=true)"
                )
            return await self._plan_library_image(where, record.images[0])
        raise ImageReferenceError(f"{where} is not a usable image reference: {value[:100]!r}. Give {FORMS}")

    def _plan_data_uri(self, where: str, value: str) -> _Upload:
        match = _DATA_URI.match(value)
        if match is None or ";base64" not in (match.group("params") or ""):
            raise ImageReferenceError(f"{where}: a data: URI must be base64, like data:image/png;base64,...")
        payload = match.group("data")
        if len(payload) * 3 // 4 > self._max_bytes:
            raise ImageReferenceError(f"{where} is larger than the {self._max_bytes // (1024 * 1024)} MiB limit")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageReferenceError(f"{where}: the data: URI is not valid base64") from None
        return self._checked_upload(where, data, "image")

    async def _plan_path(self, where: str, path: Path) -> _Upload:
        # One open, every check on the descriptor, in a worker thread: no check-then-read race, no
        # FIFO that hangs, no device that never ends (see sandbox.py).
        try:
            local = await read_local_file(path, allowed_dirs=self._allowed, limit=self._max_bytes, where=where)
        except SandboxError as exc:
            raise ImageReferenceError(str(exc)) from None
        return self._checked_upload(where, local.data, local.real_path.stem)

    async def _plan_library_image(self, where: str, image: ImageRecord) -> _Ready | _Upload:
        if image.url and self._clock.time() - image.created_at < _REUSE_REMOTE_URL_S:
            return _Ready(image.url)
        if image.path is None:
            raise ImageReferenceError(f"{where}: image {image.id} was never downloaded")
        if image.bytes is not None and image.bytes > self._max_bytes:  # refuse before reading it all
            raise ImageReferenceError(
                f"{where}: image {image.id} is {image.bytes / 1048576:.1f} MiB; the limit is "
                f"{self._max_bytes / 1048576:.0f} MiB"
            )
        # By id, not by the record's path: the store derives the file from the id and sandboxes the read.
        try:
            stored = await self._images.read_image(image.id)
        except ImageNotFoundError as exc:
            raise ImageReferenceError(f"{where}: {exc}") from None
        return self._checked_upload(where, stored.data, image.id)

    def _checked_upload(self, where: str, data: bytes, stem: str) -> _Upload:
        if len(data) > self._max_bytes:
            raise ImageReferenceError(
                f"{where} is {len(data) / 1048576:.1f} MiB; the limit is {self._max_bytes / 1048576:.0f} MiB"
            )
        try:
            info = inspect_image(data)
        except ImageFileError as exc:
            raise ImageReferenceError(f"{where} is {exc}") from None
        # The name goes into a multipart header: keep it to plain characters.
        safe_stem = _UNSAFE_NAME.sub("-", stem).strip("-.")[:80] or "image"
        return _Upload(
            data=data,
            filename=f"{safe_stem}{info.extension}",
            mime_type=info.mime_type,
            digest=hashlib.sha256(data).hexdigest(),
        )

    def _cached_upload(self, plan: _Upload) -> str | None:
        cached = self._uploaded.get(plan.digest)
        return cached[0] if cached and cached[1] > self._clock.time() else None

    async def _upload(self, plan: _Upload) -> str:
        cached = self._cached_upload(plan)
        if cached is not None:
            return cached
        uploaded_at = self._clock.time()
        uploaded = await self._client.upload_file(plan.data, filename=plan.filename, mime_type=plan.mime_type)
        self._uploaded[plan.digest] = (uploaded.url, upload_reusable_until(uploaded_at, uploaded.expires_at))
        return uploaded.url


def upload_reusable_until(uploaded_at: float, expires_at: str | None) -> float:
    """Until when an uploaded file's URL is given to RunAPI again instead of uploading the bytes anew.

    Uploaded URLs expire (``expires_at``; RunAPI's fixtures show an hour after the upload) and a task
    fetches its sources some time after the create, so a URL is reused only well inside its life: at most
    an hour, and never within the last quarter of it (nor its last ten minutes). An answer with no
    readable ``expires_at`` is taken to give the hour.
    """
    expires = _timestamp(expires_at)
    life = (expires - uploaded_at) if expires is not None else UPLOAD_REUSE_MAX_S
    margin = min(UPLOAD_REUSE_MARGIN_S, max(0.0, life) / 4)
    return min(uploaded_at + UPLOAD_REUSE_MAX_S, uploaded_at + life - margin)


def _timestamp(value: str | None) -> float | None:
    """An ISO 8601 time (``2026-12-07T05:00:00Z``) as a POSIX timestamp; None when it is none."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
