"""The web gallery's pages: plain view data, what each page shows of it, and the templates that lay it out
(``templates/*.html``, rendered by ``templating.py``: every value escaped; ``gallery.py`` serves them).

Nothing user-supplied is ever put inside ``<script>`` or ``<style>``; both are static files
(``templates/gallery.js``, ``gallery.css``, ``signin.js``) and carry the response's CSP nonce, so the page
needs no ``'unsafe-inline'`` (and no inline handlers: the script finds its elements itself). The page works
without JavaScript (filters are a GET form, pages are links, a picture links to its file); the script
submits the form when a select changes, narrows the current page as one types, shows times in the reader's
time zone, opens a picture full size in a lightbox on the page (arrow keys or a swipe move between
pictures, Escape closes; ``#image-<id>`` in the address opens one), and copies a prompt with one click. It
reads what it shows from the page's own elements (their text, never as HTML), so no value reaches it any
other way.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from runapi_mcp.http.templating import render
from runapi_mcp.tasks.images import extension_for
from runapi_mcp.wording import count as counted

# Long prompts are cut for the grid (the full text stays in the task store and the sidecar; the lightbox
# and "Copy prompt" take it whole from the tile's data-prompt).
PROMPT_SHOWN_CHARS = 1000
SLUG_CHARS = 60  # the readable part of a download's file name
SOURCES_SHOWN = 4  # an edit of many pictures names the first few, and how many more


@dataclass(frozen=True)
class Source:
    """A picture an edit or an upscale was made from (an entry of its task's request)."""

    image_id: str | None = None  # one of the library's (of the same owner): linked in the gallery
    task_id: str | None = None  # the task that made it
    url: str | None = None  # otherwise where RunAPI fetched it (an http(s) URL)
    has_file: bool = False  # the library holds its file (a thumbnail can be shown)


@dataclass(frozen=True)
class Tile:
    """One cell of the grid: an image of a task, or a task that has no image in the library."""

    task_id: str
    model: str
    status: str
    prompt: str | None
    created_at: float
    price_cents: int | None
    image_id: str | None = None  # None: nothing to show (failed, still running, not downloaded)
    width: int | None = None
    height: int | None = None
    bytes: int | None = None
    note: str | None = None  # why there is no image (the task's error), or which output of several
    action: str = "text_to_image"  # the task's endpoint (edit_image, upscale_image, ...)
    sources: Sequence[Source] = field(default_factory=tuple)  # what an edit or an upscale was made from
    mime_type: str | None = None
    name_from: str | None = None  # what a download is named from (the prompt; an upscale's: its source's)


@dataclass(frozen=True)
class Filters:
    """The query-string filters, already checked (``gallery.py`` drops what it does not accept)."""

    q: str = ""
    model: str = ""
    status: str = ""
    task: str = ""  # one task's pictures (where a "made from" link goes)

    def query(self, **extra: str) -> str:
        """The filters (and ``extra``) as a query string, empty values left out, with its ``?``."""
        own = (("q", self.q), ("model", self.model), ("status", self.status), ("task", self.task))
        items = [(k, v) for k, v in (*own, *extra.items()) if v]
        return "?" + urlencode(items) if items else ""


@dataclass(frozen=True)
class SignInLink:
    """A sign-in link's token (already checked), shown in the form for the visitor to confirm."""

    token: str
    who: str | None  # the token's user; None: the server's shared token
    next: str  # where the gallery opens after (the link's own filters)


@dataclass(frozen=True)
class GalleryView:
    base: str  # where the gallery is mounted ("/gallery")
    tiles: Sequence[Tile]
    filters: Filters
    models: Sequence[str]
    statuses: Sequence[str]
    next_cursor: str | None
    first_page: bool
    scan_note: str | None = None  # a text search that stopped at its scan limit says so
    signed_in: bool = False  # a cookie session: offer "Sign out"
    count: int | None = None  # how many pictures match the filters (on every page); None: not counted


def _when(epoch: float) -> tuple[str, str]:
    """(ISO 8601 for ``datetime=``, a UTC text for readers without JavaScript)."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z"), moment.strftime("%Y-%m-%d %H:%M UTC")


def _price(cents: int | None) -> str:
    return "—" if cents is None else f"${cents / 100:.2f}"


def _bytes(count: int | None) -> str:
    if count is None:
        return ""
    size = float(count)
    for unit in ("B", "KB", "MB"):
        if size < 1024 or unit == "MB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _size(tile: Tile) -> str:
    parts = []
    if tile.width and tile.height:
        parts.append(f"{tile.width}×{tile.height}")
    if tile.bytes:
        parts.append(_bytes(tile.bytes))
    return " · ".join(parts) or "—"


def _thumb_box(tile: Tile, edge: int) -> tuple[int, int]:
    """The thumbnail's size, so the layout does not move while thumbnails load."""
    if not (tile.width and tile.height):
        return edge, edge
    scale = min(1.0, edge / max(tile.width, tile.height))
    return max(1, round(tile.width * scale)), max(1, round(tile.height * scale))


def _slug_words(prompt: str | None) -> list[str]:
    """The prompt's words, case-folded (any script): a file name's readable part."""
    return re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", prompt or "").casefold())


def _joined(words: Sequence[str], limit: int) -> str:
    out = ""
    for word in words:
        if out and len(out) + 1 + len(word) > limit:
            break
        out = f"{out}-{word}" if out else word[:limit]
    return out


def download_names(prompt: str | None, image_id: str, mime_type: str | None) -> tuple[str, str]:
    """A picture's file name from its prompt: (the name, its ASCII form).

    A readable slug of the prompt's first words (up to :data:`SLUG_CHARS`), then a short id (8 hex digits
    of the image id's hash: pictures of one prompt get different names), then the extension:
    ``a-red-fox-in-fresh-snow-1f3a9c2e.png``. The ASCII form spells accented letters without their
    accents; a prompt with no Latin letters (or none at all) is ``image-<id>``.
    """
    short = hashlib.sha256(image_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    extension = extension_for(mime_type)
    words = _slug_words(prompt)
    plain = unicodedata.normalize("NFKD", " ".join(words)).encode("ascii", "ignore").decode()
    name = _joined(words, SLUG_CHARS) or "image"
    ascii_name = _joined(re.findall(r"[a-z0-9]+", plain), SLUG_CHARS) or "image"
    return f"{name}-{short}{extension}", f"{ascii_name}-{short}{extension}"


def content_disposition(
    prompt: str | None, image_id: str, mime_type: str | None, disposition: str = "attachment"
) -> str:
    """``disposition`` with the name of :func:`download_names` (RFC 6266: ``filename*`` when it is not
    ASCII). Inline too: a browser saving a picture it shows ("Save image as") offers the same name."""
    name, ascii_name = download_names(prompt, image_id, mime_type)
    header = f'{disposition}; filename="{ascii_name}"'  # [a-z0-9.-] only: nothing to quote
    if name != ascii_name:
        header += f"; filename*=UTF-8''{quote(name, safe='')}"
    return header


_MADE_FROM = {"upscale_image": "Upscaled from", "edit_image": "Edited from", "remix_image": "Remixed from"}


def source_link(base: str, source: Source) -> str:
    """Where a "made from" link goes: the source picture in the gallery (its task's page, opening it)."""
    assert source.task_id is not None and source.image_id is not None
    return f"{base}?{urlencode({'task': source.task_id})}#image-{source.image_id}"


@dataclass(frozen=True)
class SourceShown:
    """A "made from" link as the page shows it."""

    href: str
    image_id: str | None = None  # in this library (of the same owner): a link into the gallery
    task_id: str | None = None
    has_file: bool = False  # its thumbnail can be shown
    host: str | None = None  # not in this library: where RunAPI fetched it


@dataclass(frozen=True)
class TileShown:
    """What one cell of the grid shows, worked out from its :class:`Tile` (the template only lays it out)."""

    tile: Tile
    iso: str  # the time for ``datetime=``
    utc: str  # and for readers without JavaScript
    price: str
    size: str
    thumb_width: int
    thumb_height: int
    alt: str
    download: str  # the file name a download gets
    prompt: str | None  # as the tile shows it (cut past PROMPT_SHOWN_CHARS)
    whole_prompt: str | None  # the whole prompt, when the tile shows it cut (for the lightbox and copying)
    made_from: str  # "Upscaled from", "Edited from", ...
    sources: Sequence[SourceShown]
    more: int  # sources not named


def _sources_shown(base: str, tile: Tile) -> list[SourceShown]:
    shown = []
    for source in tile.sources[:SOURCES_SHOWN]:
        if source.image_id is not None and source.task_id is not None:
            shown.append(SourceShown(source_link(base, source), source.image_id, source.task_id, source.has_file))
        elif source.url is not None:
            shown.append(SourceShown(source.url, host=urlsplit(source.url).hostname or "elsewhere"))
    return shown


def tile_shown(view: GalleryView, tile: Tile, thumb_edge: int) -> TileShown:
    iso, utc = _when(tile.created_at)
    width, height = _thumb_box(tile, thumb_edge)
    prompt = tile.prompt or None
    cut = prompt is not None and len(prompt) > PROMPT_SHOWN_CHARS
    return TileShown(
        tile=tile,
        iso=iso,
        utc=utc,
        price=_price(tile.price_cents),
        size=_size(tile),
        thumb_width=width,
        thumb_height=height,
        alt=(tile.prompt or f"image of task {tile.task_id}")[:200],
        download=(
            download_names(tile.name_from or tile.prompt, tile.image_id, tile.mime_type)[0]
            if tile.image_id is not None
            else ""
        ),
        prompt=prompt[:PROMPT_SHOWN_CHARS] + "…" if prompt is not None and cut else prompt,
        whole_prompt=prompt if cut else None,
        made_from=_MADE_FROM.get(tile.action, "Made from"),
        sources=_sources_shown(view.base, tile),
        more=max(0, len(tile.sources) - SOURCES_SHOWN),
    )


def gallery_context(view: GalleryView, nonce: str, *, thumb_edge: int) -> dict[str, Any]:
    """What ``gallery.html`` shows of ``view``."""
    base, filters = view.base, view.filters
    return {
        "base": base,
        "nonce": nonce,
        "filters": filters,
        "filtered": bool(filters.query()),
        "models": view.models,
        "statuses": view.statuses,
        "signed_in": view.signed_in,
        "count": counted(view.count, "picture") if view.count is not None else None,
        "first_page": view.first_page,
        "scan_note": view.scan_note,
        "tiles": [tile_shown(view, tile, thumb_edge) for tile in view.tiles],
        "newest_href": None if view.first_page else base + filters.query(),
        "older_href": base + filters.query(cursor=view.next_cursor) if view.next_cursor else None,
        "lightbox": any(tile.image_id is not None for tile in view.tiles),
    }


def signin_context(
    base: str, nonce: str, *, error: str | None = None, link: SignInLink | None = None
) -> dict[str, Any]:
    """What ``signin.html`` shows: the form to paste the token into, or (``link``: a ``?token=`` link was
    opened) the form filled in, saying whom it signs in as."""
    return {"base": base, "nonce": nonce, "error": error, "link": link}


def problem_context(base: str, nonce: str, message: str) -> dict[str, Any]:
    """What ``problem.html`` shows: a bad request (a cursor this server did not hand out)."""
    return {"base": base, "nonce": nonce, "message": message}


def render_gallery(view: GalleryView, nonce: str, *, thumb_edge: int) -> str:
    """The gallery page: filters, the count, the grid, the link to the next (older) page, the lightbox."""
    return render("gallery.html", gallery_context(view, nonce, thumb_edge=thumb_edge))


def render_signin(base: str, nonce: str, *, error: str | None = None, link: SignInLink | None = None) -> str:
    """The page a browser without a valid session gets (with a 401)."""
    return render("signin.html", signin_context(base, nonce, error=error, link=link))


def render_problem(base: str, nonce: str, message: str) -> str:
    """A short page for a bad request."""
    return render("problem.html", problem_context(base, nonce, message))
