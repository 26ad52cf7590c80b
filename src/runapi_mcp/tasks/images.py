"""The local image library: every output is downloaded here, outliving RunAPI's 7-day URLs.

Layout: ``<root>/<image id>.<ext>`` with a ``<image id>.json`` sidecar of the task's metadata, and cached
previews under ``<root>/.previews``. The file of an image is derived from its id alone and read through
the sandbox (inside the root, no symlinks, regular files only); a sidecar is metadata, never a path.

Nothing here decodes pixels except :meth:`ImageStore.render_preview`, and that only for images within
:data:`PREVIEW_MAX_PIXELS` (see ``previews.py`` for the process-wide decode budget). Header parsing never
goes through ``Image.open``: Pillow's decompression-bomb check there would refuse even to report the size
of a huge image, and the library keeps such files (they just get no preview). So Pillow's global
``Image.MAX_IMAGE_PIXELS`` is left alone; our own limit is checked before any decode, and Pillow's check
(with whatever value the process has) still stands behind it at decode time.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import stat
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
from PIL import Image, JpegImagePlugin, TiffImagePlugin

from runapi_mcp.client import RunAPIClient, RunAPIResponseError
from runapi_mcp.private import private_dir, private_fd, tighten, tighten_entries
from runapi_mcp.tasks.records import ImageRecord, TaskRecord
from runapi_mcp.tasks.sandbox import SandboxError, open_checked_sync, read_checked_sync

log = logging.getLogger("runapi_mcp.images")

IMAGE_URI_PREFIX = "runapi://images/"
# Pillow format name -> (MIME type, extension). Only these are accepted: what image models take and give.
_FORMATS = {
    "PNG": ("image/png", ".png"),
    "JPEG": ("image/jpeg", ".jpg"),
    "WEBP": ("image/webp", ".webp"),
    "GIF": ("image/gif", ".gif"),
    "BMP": ("image/bmp", ".bmp"),
    "TIFF": ("image/tiff", ".tiff"),
}
_EXTENSION_FORMATS = {ext: fmt for fmt, (_, ext) in _FORMATS.items()}
_MIME_EXTENSIONS = dict(_FORMATS.values())
ACCEPTED_FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"
# Outputs over this are saved and linked but get no inline preview: decoding a 40 MP RGBA image takes
# 160 MB, and previews.py keeps the sum of decodes in flight under its own budget.
PREVIEW_MAX_PIXELS = 40_000_000
_SIDECAR_MAX_BYTES = 256 * 1024
_MAX_DIMENSION = 1 << 20  # no real image is wider; a larger header value is garbage
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_SAFE = re.compile(r"[^A-Za-z0-9_-]+")
_ID_PREFIX_CHARS = 40
_TAIL_BYTES = 4096


class ImageFileError(ValueError):
    """A file that is not a readable image. ``what`` says what it is instead, where that is recognisable."""

    def __init__(self, reason: str, *, what: str | None = None) -> None:
        self.reason = reason
        self.what = what
        super().__init__(f"not a readable image ({reason})")


class NotAnImageError(RunAPIResponseError):
    """A download that is not an image (an HTML error page, text, a truncated file): a response error."""


class ImageNotFoundError(LookupError):
    """No usable image with that id in the library; the message says why."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such image"


class PreviewUnavailableError(OSError):
    """No preview of this image; ``reason`` is a sentence for the caller. An OSError for older callers."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mime_type: str
    extension: str
    format: str = ""
    may_have_alpha: bool = True  # False only where the header rules it out

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decode_cost(self) -> int:
        """What a preview of it weighs in the decode budget: pixels, doubled where there may be alpha
        (Pillow resizes RGBA premultiplied: a second full-size copy; measured, 36 MP RGBA peaks at
        ~300 MB over the baseline, 36 MP RGB at ~150 MB)."""
        return self.pixels * (2 if self.may_have_alpha else 1)


@dataclass(frozen=True)
class PreviewPlan:
    """A preview still to be made: hold ``cost`` of the decode budget, then call ``render_preview``."""

    pixels: int
    cost: int


@dataclass(frozen=True)
class Preview:
    data: bytes
    mime_type: str
    width: int
    height: int


@dataclass(frozen=True)
class StoredImage:
    """A library image's metadata and its full bytes, read through the sandbox."""

    record: ImageRecord
    data: bytes


def _fit(size: tuple[int, int], edge: int) -> tuple[int, int]:
    """``size`` scaled so its long side is ``edge``."""
    scale = edge / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def image_id_for(task_id: str, index: int) -> str:
    """A file- and URI-safe id: a readable prefix of the task id, a hash of all of it, the output index.

    The hash keeps ids of task ids that share a long prefix (or differ only in unsafe characters) apart.
    """
    prefix = _SAFE.sub("-", task_id).strip("-_")[:_ID_PREFIX_CHARS].rstrip("-_") or "task"
    digest = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{prefix}-{digest}-{int(index)}"


def valid_image_id(image_id: object) -> bool:
    return isinstance(image_id, str) and _ID.match(image_id) is not None


def extension_for(mime: str | None) -> str:
    """The library's file extension for an image MIME type (``".png"``); ``""`` for any other type."""
    return _MIME_EXTENSIONS.get(mime or "", "")


# -- header-only inspection --------------------------------------------------------------------------


def _looks_like_text(head: bytes) -> bool:
    for cut in range(4):  # the head may end inside a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return all(ch.isprintable() or ch in "\t\n\r\f\v" for ch in text)
    return False


def describe_non_image(head: bytes) -> str | None:
    """What the first bytes of a non-image look like ("an HTML page", "text", ...), ``None`` if unknown."""
    if not head:
        return "an empty file"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html")) or any(t in text for t in (b"<html", b"<body", b"<head>")):
        return "an HTML page"
    if b"<svg" in text:
        return f"an SVG drawing (vector images are not accepted; use {ACCEPTED_FORMATS})"
    if text.startswith(b"<?xml"):
        return "an XML document"
    if text[:1] in (b"{", b"[") and _looks_like_text(head):
        return "a JSON document"
    if _looks_like_text(head):
        return "text"
    if not head.strip(b"\0"):
        return "a file of zero bytes"
    return None


def _sniff(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\0", b"MM\0*"):
        return "TIFF"
    return None


def _png_size(head: bytes) -> tuple[int, int]:
    if len(head) < 24 or head[12:16] != b"IHDR":
        raise ImageFileError("a PNG without its IHDR header")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _gif_size(head: bytes) -> tuple[int, int]:
    if len(head) < 10:
        raise ImageFileError("a GIF cut short in its header")
    width, height = struct.unpack("<HH", head[6:10])
    return width, height


def _webp_size(head: bytes) -> tuple[int, int]:
    # Parsed here, not by Pillow: its WebP opener allocates the whole canvas just to read the header.
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8X" and len(head) >= 30:
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise ImageFileError("a WebP file without a readable header")


def _bmp_size(head: bytes) -> tuple[int, int]:
    if len(head) < 26:
        raise ImageFileError("a BMP cut short in its header")
    if struct.unpack("<I", head[14:18])[0] == 12:
        width, height = struct.unpack("<HH", head[18:22])
        return width, height
    width, height = struct.unpack("<ii", head[18:26])
    return width, abs(height)  # a negative height means top-down rows


def _pillow_size(fmt: str, fp: IO[bytes]) -> tuple[int, int]:
    # The plugin classes parse only the header (markers up to SOS, the first IFD): no decode, and no
    # Image.open bomb check that would refuse to tell the size of a huge picture.
    fp.seek(0)
    factory = JpegImagePlugin.JpegImageFile if fmt == "JPEG" else TiffImagePlugin.TiffImageFile
    try:
        img = factory(fp)
    except (SyntaxError, OSError, ValueError, IndexError, TypeError, KeyError, EOFError, struct.error) as exc:
        raise ImageFileError(f"a damaged {fmt} header ({exc.__class__.__name__})") from None
    except Image.DecompressionBombError:
        raise ImageFileError(f"a {fmt} whose header is not believable") from None
    return img.size


def _check_complete(fmt: str, head: bytes, tail: bytes, size: int) -> None:
    """Refuse a file cut short: the end markers are cheap to find without decoding anything."""
    cut = ImageFileError(f"truncated: the {fmt} ends before its last part; the transfer was cut short")
    if fmt == "PNG" and b"IEND" not in tail:
        raise cut
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        raise cut
    if fmt == "GIF" and not tail.rstrip(b"\0").endswith(b";"):
        raise cut
    if fmt == "WEBP" and struct.unpack("<I", head[4:8])[0] + 8 > size:
        raise cut
    if fmt == "BMP" and struct.unpack("<I", head[2:6])[0] > size:
        raise cut


def _inspect_stream(fp: IO[bytes], size: int, *, complete: bool) -> ImageInfo:
    fp.seek(0)
    head = fp.read(1024)
    fmt = _sniff(head)
    if fmt is None:
        what = describe_non_image(head)
        raise ImageFileError(f"it is {what}" if what else f"not {ACCEPTED_FORMATS}", what=what)
    try:
        if fmt == "PNG":
            width, height = _png_size(head)
        elif fmt == "GIF":
            width, height = _gif_size(head)
        elif fmt == "WEBP":
            width, height = _webp_size(head)
        elif fmt == "BMP":
            width, height = _bmp_size(head)
        else:
            width, height = _pillow_size(fmt, fp)
    except struct.error:
        raise ImageFileError(f"a {fmt} cut short in its header") from None
    if not (0 < width <= _MAX_DIMENSION and 0 < height <= _MAX_DIMENSION):
        raise ImageFileError(f"a {fmt} header with an impossible size {width}x{height}")
    if complete:
        fp.seek(max(0, size - _TAIL_BYTES))
        _check_complete(fmt, head, fp.read(_TAIL_BYTES), size)
    mime, ext = _FORMATS[fmt]
    return ImageInfo(
        width=width, height=height, mime_type=mime, extension=ext, format=fmt, may_have_alpha=_may_have_alpha(fmt, head)
    )


def _may_have_alpha(fmt: str, head: bytes) -> bool:
    """Whether the decoded image may carry an alpha band (palette images decode to one byte a pixel)."""
    if fmt in ("JPEG", "GIF"):
        return False
    if fmt == "PNG":
        return len(head) < 26 or head[25] in (4, 6)  # colour types: grey+alpha, RGB+alpha
    if fmt == "WEBP":
        return head[12:16] != b"VP8 "  # simple lossy WebP has no alpha
    return True


def inspect_image(source: bytes | IO[bytes] | Path, *, complete: bool = False) -> ImageInfo:
    """Format and size of an image, read from its header only: no pixel is decoded (blocking).

    ``complete``: also refuse a file whose end marker is missing (a cut-short download). A path is
    opened through the sandbox (its own directory allowed, no symlink, regular files only).
    """
    if isinstance(source, bytes):
        return _inspect_stream(io.BytesIO(source), len(source), complete=complete)
    if isinstance(source, Path):
        try:
            with (
                open_checked_sync(source, allowed_dirs=[source.parent], limit=sys.maxsize) as opened,
                open(opened.fd, "rb", closefd=False) as fp,
            ):
                return _inspect_stream(fp, opened.size, complete=complete)
        except SandboxError as exc:
            raise ImageFileError(str(exc)) from None
    size = source.seek(0, os.SEEK_END)
    return _inspect_stream(source, size, complete=complete)


# -- small helpers for hostile metadata --------------------------------------------------------------


def _meta_str(value: object, limit: int = 1000) -> str | None:
    return value if isinstance(value, str) and len(value) <= limit and value.isprintable() else None


def _meta_int(value: object, high: int) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= high else None


def _meta_time(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` via a fresh temp file renamed over it: a planted symlink is replaced, never followed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        private_fd(fd)  # mkstemp asks for 0600, through the umask
        with open(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ImageStore:
    """Files under ``root``: ``<image id>.<ext>`` with a ``.json`` sidecar of the task's metadata."""

    def __init__(self, root: Path, *, max_bytes: int = 200 * 1024 * 1024) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._preview_dir = root / ".previews"

    def ensure(self) -> None:
        """The library's directories, private (0700; see ``runapi_mcp.private``), blocking. A library
        found open to other users is tightened, its files too (0600), with a log line."""
        opened = [(folder, private_dir(folder)) for folder in (self.root, self._preview_dir)]
        loose = [(folder, mode) for folder, mode in opened if mode is not None]
        if loose:
            files = tighten_entries(folder for folder, _ in opened)
            shown = ", ".join(f"{folder} (was {mode:o})" for folder, mode in loose)
            log.warning("the image library was open to other users: made %s private, and %d files in it", shown, files)

    # -- downloading -------------------------------------------------------------------------------

    async def download(
        self, client: RunAPIClient, record: TaskRecord, index: int, url: str, *, deadline_s: float | None = None
    ) -> ImageRecord:
        """Stream one output to disk, check it is a whole image of a known format, name it by that format
        and write the metadata sidecar. Anything else raises :class:`NotAnImageError` and leaves no file."""
        image_id = image_id_for(record.task_id, index)
        await anyio.to_thread.run_sync(self.ensure)
        partial = self.root / f"{image_id}.download"
        try:
            result = await client.download(url, partial, max_bytes=self.max_bytes, deadline_s=deadline_s)
            info = await anyio.to_thread.run_sync(self._inspect_download, partial)
            await anyio.to_thread.run_sync(tighten, partial)  # the client wrote it through the umask
            final = self.root / f"{image_id}{info.extension}"
            # rename() replaces whatever is at ``final`` (even a planted symlink) and never follows it.
            await anyio.Path(partial).rename(final)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.Path(partial).unlink(missing_ok=True)
        image = self.undownloaded(record.task_id, index, url).model_copy(
            update={
                "path": str(final),
                "width": info.width,
                "height": info.height,
                "mime_type": info.mime_type,
                "bytes": result.bytes_written,
            }
        )
        await anyio.to_thread.run_sync(self._write_sidecar, image, record)
        return image

    def _inspect_download(self, partial: Path) -> ImageInfo:
        try:
            return inspect_image(partial, complete=True)
        except ImageFileError as exc:
            if exc.what:
                message = f"the image host sent {exc.what}, not an image"
            else:
                message = f"the image host sent a file that is {exc}"
            raise NotAnImageError(message, summary="") from None

    def remove_partials(self, older_than_s: float) -> int:
        """Remove partial downloads and temp files not touched for ``older_than_s`` seconds (blocking).

        Left by a process that was killed mid-download. Only old ones: another server sharing this
        library may be downloading right now (a live download ends within its deadline)."""
        cutoff = time.time() - older_than_s
        removed = 0
        for folder in (self.root, self._preview_dir):
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                name = entry.name
                partial = name.endswith((".download", ".part")) or (name.startswith(".") and name.endswith(".tmp"))
                if not partial:
                    continue
                try:
                    if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except OSError:
                    continue
        return removed

    @staticmethod
    def undownloaded(task_id: str, index: int, url: str) -> ImageRecord:
        """The record of an output known only by its RunAPI URL (not, or not yet, in the library)."""
        image_id = image_id_for(task_id, index)
        return ImageRecord(id=image_id, task_id=task_id, index=index, uri=IMAGE_URI_PREFIX + image_id, url=url)

    def _write_sidecar(self, image: ImageRecord, record: TaskRecord) -> None:
        meta: dict[str, Any] = {
            "image": image.model_dump(),
            "task_id": record.task_id,
            "model": record.model,
            "service": record.service,
            "action": record.action,
            "prompt": record.prompt,
            "request": record.request,
            "created_at": record.created_at,
            "completed_at": record.completed_at,
        }
        _atomic_write(self.root / f"{image.id}.json", json.dumps(meta, indent=2, default=str).encode())

    # -- finding and reading -----------------------------------------------------------------------

    def _image_file(self, image_id: str) -> tuple[Path, os.stat_result] | None:
        """The id's own file ``<root>/<id>.<ext>``: a regular file, not a link (blocking, one lstat each)."""
        if not valid_image_id(image_id):
            return None
        for ext in _EXTENSION_FORMATS:
            path = self.root / f"{image_id}{ext}"
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                return path, st
        return None

    def _sidecar(self, image_id: str) -> dict[str, Any]:
        """The sidecar's ``image`` fields, or ``{}`` when it is missing, too big, not JSON or not a file."""
        try:
            raw = read_checked_sync(
                self.root / f"{image_id}.json", allowed_dirs=[self.root], limit=_SIDECAR_MAX_BYTES
            ).data
            meta = json.loads(raw)
        except (SandboxError, ValueError, RecursionError):
            return {}
        image = meta.get("image") if isinstance(meta, dict) else None
        return image if isinstance(image, dict) else {}

    def _record(self, image_id: str, path: Path, size: int, mtime: float) -> ImageRecord:
        """The record of a library file. Location, type and size come from the file itself; the
        sidecar only adds metadata, each field checked and dropped when odd."""
        meta = self._sidecar(image_id)
        index = meta.get("index")
        if not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < 10_000):
            match = re.search(r"-(\d{1,4})$", image_id)
            index = int(match.group(1)) if match else 0
        url = _meta_str(meta.get("url"), 8192)
        if url is not None and not url.lower().startswith(("https://", "http://")):
            url = None
        return ImageRecord(
            id=image_id,
            task_id=_meta_str(meta.get("task_id")) or "",
            index=index,
            uri=IMAGE_URI_PREFIX + image_id,
            path=str(path),
            url=url,
            width=_meta_int(meta.get("width"), _MAX_DIMENSION),
            height=_meta_int(meta.get("height"), _MAX_DIMENSION),
            mime_type=_FORMATS[_EXTENSION_FORMATS[path.suffix]][0],
            bytes=size,
            created_at=_meta_time(meta.get("created_at")) or mtime,
        )

    def find(self, image_id: str) -> ImageRecord | None:
        """An image by id (images of earlier runs too), or ``None``. Blocking but cheap: a few ``lstat``
        calls and a sidecar of at most 256 KiB; async code should prefer :meth:`lookup`."""
        found = self._image_file(image_id)
        if found is None:
            return None
        path, st = found
        return self._record(image_id, path, st.st_size, st.st_mtime)

    async def lookup(self, image_id: str) -> ImageRecord | None:
        """:meth:`find` in a worker thread."""
        return await anyio.to_thread.run_sync(self.find, image_id)

    def read_image_sync(self, image_id: str) -> StoredImage:
        """The full bytes of a library image (blocking). Raises :class:`ImageNotFoundError`.

        The file is ``<root>/<id>.<ext>``, opened once through the sandbox (inside the root, no symlink,
        a regular file of at most ``max_bytes``), and must be an image of the format its name says.
        """
        found = self._image_file(image_id)
        if found is None:
            raise ImageNotFoundError(f"no image {image_id!r} in the library")
        path, st = found
        try:
            data = read_checked_sync(path, allowed_dirs=[self.root], limit=self.max_bytes).data
            info = inspect_image(data)
        except (SandboxError, ImageFileError) as exc:
            log.warning("library image %s is unusable: %s", image_id, exc)
            raise ImageNotFoundError(f"the library file of image {image_id!r} cannot be used: {exc}") from None
        if info.extension != path.suffix:
            raise ImageNotFoundError(f"the library file of image {image_id!r} is not the {path.suffix} it claims")
        record = self._record(image_id, path, len(data), st.st_mtime)
        record = record.model_copy(update={"width": info.width, "height": info.height})
        return StoredImage(record=record, data=data)

    @contextmanager
    def open_image_sync(self, image_id: str) -> Iterator[tuple[IO[bytes], ImageInfo, int]]:
        """A library image's file, its header read, and its size: for a copy streamed elsewhere (blocking).

        Opened like :meth:`read_image_sync` (by id, through the sandbox, of the format its name says) but
        not read whole: an output may be up to ``max_bytes``. Raises :class:`ImageNotFoundError`.
        """
        found = self._image_file(image_id)
        if found is None:
            raise ImageNotFoundError(f"no image {image_id!r} in the library")
        path = found[0]
        with ExitStack() as stack:
            try:  # only the opening and the checks: what the caller's block raises is the caller's
                opened = stack.enter_context(open_checked_sync(path, allowed_dirs=[self.root], limit=self.max_bytes))
                fp = stack.enter_context(open(opened.fd, "rb", closefd=False))
                info = _inspect_stream(fp, opened.size, complete=False)
                if info.extension != path.suffix:
                    raise ImageFileError(f"not the {path.suffix} its name says")
                fp.seek(0)
            except (SandboxError, ImageFileError) as exc:
                raise ImageNotFoundError(f"the library file of image {image_id!r} cannot be used: {exc}") from None
            yield fp, info, opened.size

    async def read_image(self, image_id: str) -> StoredImage:
        """:meth:`read_image_sync` in a worker thread (for ``runapi://images/{id}`` and edit uploads)."""
        return await anyio.to_thread.run_sync(self.read_image_sync, image_id)

    async def read(self, image_id: str) -> bytes | None:
        """The bytes of a library image, or ``None`` when there is no usable one (the resource handler)."""
        try:
            return (await self.read_image(image_id)).data
        except ImageNotFoundError:
            return None

    def list_images_sync(self, limit: int = 100) -> list[ImageRecord]:
        """The newest ``limit`` library images (blocking: one directory scan plus a sidecar read each)."""
        found: list[tuple[float, str, Path, os.stat_result]] = []
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return []
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext not in _EXTENSION_FORMATS or not valid_image_id(stem):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((st.st_mtime, stem, Path(entry.path), st))
        found.sort(key=lambda item: item[0], reverse=True)
        return [self._record(stem, path, st.st_size, st.st_mtime) for _, stem, path, st in found[: max(0, limit)]]

    async def list_images(self, limit: int = 100) -> list[ImageRecord]:
        """:meth:`list_images_sync` in a worker thread."""
        return await anyio.to_thread.run_sync(self.list_images_sync, limit)

    # -- previews ----------------------------------------------------------------------------------

    def _cache_path(self, image_id: str, max_edge: int, max_bytes: int, suffix: str) -> Path:
        return self._preview_dir / f"{image_id}-{max_edge}-{max_bytes}{suffix}"

    def cached_preview(self, image: ImageRecord, max_edge: int, max_bytes: int) -> Preview | None:
        """A preview made earlier, if the cache holds a sound one (blocking)."""
        if not valid_image_id(image.id):
            return None
        for suffix, mime in ((".jpg", "image/jpeg"), (".png", "image/png")):
            try:
                data = read_checked_sync(
                    self._cache_path(image.id, max_edge, max_bytes, suffix),
                    allowed_dirs=[self._preview_dir],
                    limit=max(max_bytes, 4 * 1024 * 1024),
                ).data
                info = inspect_image(data)
            except (SandboxError, ImageFileError):
                continue  # missing, or something planted: make a fresh one
            if info.mime_type == mime:
                return Preview(data, mime, info.width, info.height)
        return None

    def plan_preview(self, image: ImageRecord, max_edge: int = 1024, max_bytes: int = 300_000) -> Preview | PreviewPlan:
        """A cached preview, or what a fresh one will decode (blocking; header only).

        Raises :class:`PreviewUnavailableError` with the reason when there will be no preview.
        """
        cached = self.cached_preview(image, max_edge, max_bytes)
        if cached is not None:
            return cached
        info = self._preview_source_info(image)
        return PreviewPlan(pixels=info.pixels, cost=info.decode_cost)

    @contextmanager
    def _open_for_preview(self, image: ImageRecord) -> Iterator[tuple[IO[bytes], ImageInfo]]:
        """The library file of ``image``, opened through the sandbox, with its header read (blocking)."""
        found = self._image_file(image.id) if image.path is not None else None
        if found is None:
            raise PreviewUnavailableError(f"image {image.id} is not in the library")
        with (
            open_checked_sync(found[0], allowed_dirs=[self.root], limit=self.max_bytes) as opened,
            open(opened.fd, "rb", closefd=False) as fp,
        ):
            yield fp, _inspect_stream(fp, opened.size, complete=False)

    def _preview_source_info(self, image: ImageRecord) -> ImageInfo:
        try:
            with self._open_for_preview(image) as (_, info):
                pass
        except (SandboxError, ImageFileError, OSError) as exc:
            if isinstance(exc, PreviewUnavailableError):
                raise
            raise PreviewUnavailableError(f"image {image.id} cannot be read: {exc}") from None
        _check_preview_size(info.width, info.height)
        return info

    def render_preview(
        self,
        image: ImageRecord,
        max_edge: int = 1024,
        max_bytes: int = 300_000,
        max_pixels: int = PREVIEW_MAX_PIXELS,
    ) -> Preview:
        """Decode ``image`` into a small JPEG (PNG when transparent) and cache it (blocking, CPU and memory:
        call it holding the decode budget of ``previews.py``). Nothing over ``max_pixels`` is decoded.

        Raises :class:`PreviewUnavailableError` with the reason on any failure.
        """
        try:
            with self._open_for_preview(image) as (fp, info):
                _check_preview_size(info.width, info.height, max_pixels)
                fp.seek(0)
                preview = self._render(fp, info.format, max_edge, max_bytes, max_pixels)
        except PreviewUnavailableError:
            raise
        except Image.DecompressionBombError:
            raise PreviewUnavailableError(f"image {image.id} is too large to decode; open the file instead") from None
        except SandboxError as exc:
            raise PreviewUnavailableError(f"image {image.id} cannot be read: {exc}") from None
        except MemoryError:
            raise PreviewUnavailableError(f"there was not enough memory to preview image {image.id}") from None
        except Exception as exc:  # Pillow raises many types for damaged files; a preview is optional
            log.warning("could not make a preview of %s: %r", image.id, exc)
            raise PreviewUnavailableError(
                f"image {image.id} could not be decoded ({exc.__class__.__name__}); the file is kept"
            ) from None
        suffix = ".png" if preview.mime_type == "image/png" else ".jpg"
        try:
            private_dir(self._preview_dir)
            _atomic_write(self._cache_path(image.id, max_edge, max_bytes, suffix), preview.data)
        except OSError as exc:  # the preview is still good; only the cache missed out
            log.warning("could not cache the preview of %s: %s", image.id, exc)
        return preview

    @staticmethod
    def _render(fp: IO[bytes], fmt: str, max_edge: int, max_bytes: int, max_pixels: int) -> Preview:
        with Image.open(fp, formats=[fmt]) as src:
            # The header Pillow read may differ from ours (a GIF frame larger than its screen): check again.
            _check_preview_size(src.width, src.height, max_pixels)
            has_alpha = src.mode in ("RGBA", "LA", "PA") or (src.mode == "P" and "transparency" in src.info)
            # This runs between "RunAPI finished" and "the client has the picture": shrink before
            # converting, and let Pillow box-reduce first (a 4K PNG: ~105 ms instead of ~185 ms).
            src.draft("RGBA" if has_alpha else "RGB", (max_edge, max_edge))  # JPEG: decode at a smaller scale
            src.thumbnail((max_edge, max_edge), Image.Resampling.LANCZOS, reducing_gap=1.5)
            img = src.convert("RGBA" if has_alpha else "RGB")
        edge = max_edge
        while True:
            thumb = img if edge >= max(img.size) else img.resize(_fit(img.size, edge), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            if has_alpha:
                thumb.save(buf, "PNG", compress_level=6)
                mime = "image/png"
            else:
                thumb.save(buf, "JPEG", quality=82)
                mime = "image/jpeg"
            if buf.tell() <= max_bytes or edge <= 256:
                break
            edge = int(edge * 0.75)
        return Preview(buf.getvalue(), mime, thumb.width, thumb.height)

    def preview(self, image: ImageRecord, max_edge: int = 1024, max_bytes: int = 300_000) -> Preview:
        """A cached or fresh preview, with no shared decode budget (blocking). Prefer
        ``previews.make_previews``. Raises :class:`PreviewUnavailableError` (an OSError) with the reason."""
        plan = self.plan_preview(image, max_edge, max_bytes)
        if isinstance(plan, Preview):
            return plan
        return self.render_preview(image, max_edge, max_bytes, max_pixels=plan.pixels)


def _check_preview_size(width: int, height: int, max_pixels: int = PREVIEW_MAX_PIXELS) -> None:
    """Refuse to decode over the preview limit, or over ``max_pixels`` (what the caller budgeted for)."""
    if width * height > PREVIEW_MAX_PIXELS:
        raise PreviewUnavailableError(
            f"{width}x{height} is over the {PREVIEW_MAX_PIXELS / 1e6:g} MP preview limit; open the file instead"
        )
    if width * height > max_pixels:
        raise PreviewUnavailableError(
            f"the image changed ({width}x{height}) while its preview was being made; ask again"
        )
