"""The web gallery's HTML: pure functions from plain view data to a page (``gallery.py`` serves them).

Every piece of text that reaches the page goes through :func:`_e` (``html.escape`` with quotes), text
content and attribute values alike: prompts, errors and model names are user or upstream text. Nothing
user-supplied is ever put inside ``<script>`` or ``<style>``; both are static and carry the response's
CSP nonce, so the page needs no ``'unsafe-inline'``. The page works without JavaScript (filters are a
GET form, pages are links); the script only submits the form when a select changes, narrows the
current page as one types, and shows times in the reader's time zone.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

# Long prompts are cut for the grid (the full text stays in the task store and the sidecar).
PROMPT_SHOWN_CHARS = 1000


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


@dataclass(frozen=True)
class Filters:
    """The query-string filters, already checked (``gallery.py`` drops what it does not accept)."""

    q: str = ""
    model: str = ""
    status: str = ""

    def query(self, **extra: str) -> str:
        """The filters (and ``extra``) as a query string, empty values left out, with its ``?``."""
        items = [
            (k, v) for k, v in (("q", self.q), ("model", self.model), ("status", self.status), *extra.items()) if v
        ]
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


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


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


_STYLE = """
:root { color-scheme: light dark; --bg: #f6f6f4; --card: #fff; --ink: #1d1d1f; --muted: #6b6b70;
  --line: #e2e2de; --accent: #2457c5; --warn: #a4441a; }
@media (prefers-color-scheme: dark) { :root { --bg: #141416; --card: #1e1e21; --ink: #ececee;
  --muted: #9a9aa2; --line: #2d2d31; --accent: #8bb0ff; --warn: #ff9d6e; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg);
  color: var(--ink); }
header { position: sticky; top: 0; z-index: 1; background: var(--bg); border-bottom: 1px solid var(--line);
  padding: 12px 20px; display: flex; flex-wrap: wrap; gap: 12px 24px; align-items: center; }
h1 { font-size: 18px; margin: 0; font-weight: 600; }
h1 small { color: var(--muted); font-weight: 400; }
form.filters { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 0; flex: 1; }
form.filters input, form.filters select, form.filters button, .signin input, .signin button {
  font: inherit; padding: 6px 10px; border: 1px solid var(--line); border-radius: 6px; background: var(--card);
  color: var(--ink); }
form.filters input[type=search] { min-width: 16em; flex: 1; max-width: 28em; }
form.filters button, .signin button { cursor: pointer; }
a { color: var(--accent); }
.signout { margin: 0; }
.signout button { font: inherit; background: none; border: 0; color: var(--accent); cursor: pointer;
  text-decoration: underline; padding: 0; }
main { padding: 16px 20px 40px; }
.summary { color: var(--muted); margin: 0 0 12px; }
ul.grid { list-style: none; padding: 0; margin: 0; display: grid; gap: 16px;
  grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); }
.tile { background: var(--card); border: 1px solid var(--line); border-radius: 10px; overflow: hidden;
  display: flex; flex-direction: column; }
.tile[hidden] { display: none; }
.thumb { display: flex; align-items: center; justify-content: center; aspect-ratio: 1; background: var(--line); }
.thumb img { max-width: 100%; max-height: 100%; width: auto; height: auto; display: block; }
.thumb.empty { color: var(--muted); font-size: 13px; padding: 16px; text-align: center; }
.meta { padding: 10px 12px 12px; display: flex; flex-direction: column; gap: 6px; flex: 1; }
.prompt { margin: 0; display: -webkit-box; -webkit-line-clamp: 4; -webkit-box-orient: vertical; overflow: hidden;
  overflow-wrap: anywhere; white-space: pre-wrap; }
.prompt.none { color: var(--muted); font-style: italic; }
dl { margin: 0; display: grid; grid-template-columns: auto 1fr; gap: 2px 10px; font-size: 12px; color: var(--muted); }
dt { font-weight: 500; }
dd { margin: 0; overflow-wrap: anywhere; color: var(--ink); }
dd.id { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 11px; }
.status { display: inline-block; font-size: 11px; padding: 1px 8px; border-radius: 999px;
  border: 1px solid var(--line); }
.status.failed, .status.cancelled { color: var(--warn); border-color: var(--warn); }
.actions { margin-top: auto; display: flex; gap: 12px; font-size: 13px; }
nav.pages { margin-top: 20px; display: flex; gap: 16px; }
.empty-state { color: var(--muted); padding: 40px 0; text-align: center; }
.signin { max-width: 30em; margin: 12vh auto; background: var(--card); border: 1px solid var(--line);
  border-radius: 10px; padding: 24px; }
.signin h1 { margin-bottom: 12px; }
.signin form { display: flex; gap: 8px; margin: 16px 0; }
.signin input { flex: 1; }
.error { color: var(--warn); }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
"""

# Static: no value of the page is ever put in here (see the module docstring).
_SCRIPT = """
(() => {
  const form = document.getElementById("filters");
  if (!form) return;
  for (const select of form.querySelectorAll("select")) {
    select.addEventListener("change", () => form.submit());
  }
  const search = form.querySelector("input[name=q]");
  const tiles = Array.from(document.querySelectorAll("li.tile"));
  const shown = document.getElementById("shown");
  search.addEventListener("input", () => {
    const needle = search.value.trim().toLowerCase();
    let count = 0;
    for (const tile of tiles) {
      const prompt = tile.querySelector(".prompt");
      const hit = !needle || (prompt !== null && prompt.textContent.toLowerCase().includes(needle));
      tile.hidden = !hit;
      if (hit) count += 1;
    }
    if (shown) {
      shown.textContent = needle ? `${count} of ${tiles.length} on this page match; Enter searches all` : "";
    }
  });
  for (const time of document.querySelectorAll("time[datetime]")) {
    const when = new Date(time.dateTime);
    if (!Number.isNaN(when.getTime())) {
      time.title = time.textContent;
      time.textContent = when.toLocaleString();
    }
  }
})();
"""


# Static too. The sign-in page of a ``?token=`` link takes the token out of the address bar and the
# history entry at once (the form already holds it).
_SIGNIN_SCRIPT = """
(() => {
  const url = new URL(window.location.href);
  if (url.searchParams.has("token")) {
    url.searchParams.delete("token");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
})();
"""


def _head(base: str, title: str, nonce: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="same-origin">\n'
        f"<title>{_e(title)}</title>\n"
        f'<link rel="icon" href="{_e(base)}/favicon.svg" type="image/svg+xml">\n'
        f'<style nonce="{_e(nonce)}">{_STYLE}</style>\n</head>\n'
    )


def _options(values: Sequence[str], chosen: str, any_label: str) -> str:
    out = [f'<option value=""{" selected" if not chosen else ""}>{_e(any_label)}</option>']
    for value in values:
        selected = " selected" if value == chosen else ""
        out.append(f'<option value="{_e(value)}"{selected}>{_e(value)}</option>')
    return "".join(out)


def _tile(view: GalleryView, tile: Tile, thumb_edge: int) -> str:
    base = view.base
    iso, utc = _when(tile.created_at)
    if tile.image_id is not None:
        width, height = _thumb_box(tile, thumb_edge)
        alt = (tile.prompt or f"image of task {tile.task_id}")[:200]
        picture = (
            f'<a class="thumb" href="{_e(base)}/images/{_e(tile.image_id)}" title="Open the full-size image">'
            f'<img src="{_e(base)}/thumbs/{_e(tile.image_id)}" width="{width}" height="{height}" '
            f'loading="lazy" decoding="async" alt="{_e(alt)}"></a>'
        )
        actions = (
            f'<div class="actions"><a href="{_e(base)}/images/{_e(tile.image_id)}">Full size</a>'
            f'<a href="{_e(base)}/download/{_e(tile.image_id)}" download>Download</a></div>'
        )
    else:
        picture = f'<div class="thumb empty">{_e(tile.note or "No image in the library")}</div>'
        actions = ""
    if tile.prompt:
        shown = tile.prompt if len(tile.prompt) <= PROMPT_SHOWN_CHARS else tile.prompt[:PROMPT_SHOWN_CHARS] + "…"
        prompt = f'<p class="prompt" title="{_e(shown)}">{_e(shown)}</p>'
    else:
        prompt = '<p class="prompt none">(no prompt)</p>'
    status = "" if tile.status == "completed" else f' <span class="status {_e(tile.status)}">{_e(tile.status)}</span>'
    note = f"<dt>Note</dt><dd>{_e(tile.note)}</dd>" if tile.note and tile.image_id is not None else ""
    return (
        f'<li class="tile" data-model="{_e(tile.model)}" data-status="{_e(tile.status)}">{picture}'
        f'<div class="meta">{prompt}<dl>'
        f"<dt>Model</dt><dd>{_e(tile.model)}{status}</dd>"
        f'<dt>Time</dt><dd><time datetime="{_e(iso)}">{_e(utc)}</time></dd>'
        f"<dt>Price</dt><dd>{_e(_price(tile.price_cents))}</dd>"
        f"<dt>Size</dt><dd>{_e(_size(tile))}</dd>"
        f'<dt>Task</dt><dd class="id">{_e(tile.task_id)}</dd>{note}'
        f"</dl>{actions}</div></li>"
    )


def render_gallery(view: GalleryView, nonce: str, *, thumb_edge: int) -> str:
    """The gallery page: filters, the grid, and the link to the next (older) page."""
    base, filters = view.base, view.filters
    signout = (
        f'<form class="signout" method="post" action="{_e(base)}/logout"><button type="submit">Sign out</button></form>'
        if view.signed_in
        else ""
    )
    header = (
        "<header><h1>runapi-mcp <small>image library</small></h1>"
        f'<form class="filters" id="filters" method="get" action="{_e(base)}" role="search">'
        f'<input type="search" name="q" value="{_e(filters.q)}" maxlength="200" placeholder="Search prompts" '
        'aria-label="Search prompts">'
        f'<select name="model" aria-label="Model">{_options(view.models, filters.model, "Any model")}</select>'
        f'<select name="status" aria-label="Status">{_options(view.statuses, filters.status, "Any status")}</select>'
        f'<button type="submit">Filter</button><a href="{_e(base)}">Clear</a></form>{signout}</header>\n'
    )
    if view.tiles:
        grid = '<ul class="grid">' + "".join(_tile(view, tile, thumb_edge) for tile in view.tiles) + "</ul>"
    else:
        grid = (
            '<p class="empty-state">No images match.</p>'
            if filters.query()
            else ('<p class="empty-state">No images yet. Ask your MCP client to generate one.</p>')
        )
    summary = "Newest first" + ("" if view.first_page else " (older page)")
    if view.scan_note:
        summary += f". {view.scan_note}"
    pages = []
    if not view.first_page:
        pages.append(f'<a href="{_e(base + filters.query())}">Newest</a>')
    if view.next_cursor:
        pages.append(f'<a rel="next" href="{_e(base + filters.query(cursor=view.next_cursor))}">Older →</a>')
    nav = f'<nav class="pages">{"".join(pages)}</nav>' if pages else ""
    return (
        _head(base, "runapi-mcp gallery", nonce)
        + "<body>\n"
        + header
        + f'<main><p class="summary">{_e(summary)}. <span id="shown" aria-live="polite"></span></p>\n'
        + grid
        + nav
        + "</main>\n"
        + f'<script nonce="{_e(nonce)}">{_SCRIPT}</script>\n</body>\n</html>\n'
    )


def render_signin(base: str, nonce: str, *, error: str | None = None, link: SignInLink | None = None) -> str:
    """The page a browser without a valid session gets (with a 401): a form to paste the token into.

    ``link``: a ``?token=`` link was opened. The form comes filled in and says whom it signs in as; the
    visitor's own click signs in (a link alone never does: another site may have sent them there).
    """
    problem = f'<p class="error">{_e(error)}</p>' if error else ""
    action = f'<form method="post" action="{_e(base)}/login">'
    if link is not None:
        whom = f"as <strong>{_e(link.who)}</strong>" if link.who else "with this server's shared token"
        return (
            _head(base, "Sign in: runapi-mcp gallery", nonce)
            + '<body><div class="signin"><h1>runapi-mcp gallery</h1>'
            + f"<p>This link signs this browser in to the gallery {whom}.</p>"
            + "<p>Open the gallery only if you expected that: a page of another site may have sent you here.</p>"
            + action
            + f'<input type="password" name="token" value="{_e(link.token)}" autocomplete="off" required '
            'aria-label="Access token">'
            + f'<input type="hidden" name="next" value="{_e(link.next)}">'
            + '<button type="submit">Open the gallery</button></form>'
            + f'<p><a href="{_e(base)}">Cancel</a></p></div>'
            + f'<script nonce="{_e(nonce)}">{_SIGNIN_SCRIPT}</script></body>\n</html>\n'
        )
    return (
        _head(base, "Sign in: runapi-mcp gallery", nonce)
        + '<body><div class="signin"><h1>runapi-mcp gallery</h1>'
        + problem
        + "<p>This server needs an access token. Paste the bearer token your MCP client uses "
        "(<code>RUNAPI_MCP_AUTH_TOKEN</code> or your OAuth access token):</p>"
        + action
        + '<input type="password" name="token" autocomplete="current-password" required aria-label="Access token">'
        '<button type="submit">Open</button></form>'
        f"<p>A link to <code>{_e(base)}?token=…</code> opens this form filled in. The token is kept in a "
        "cookie that only this gallery reads.</p></div></body>\n</html>\n"
    )


def render_problem(base: str, nonce: str, message: str) -> str:
    """A short page for a bad request (a cursor this server did not hand out)."""
    return (
        _head(base, "runapi-mcp gallery", nonce)
        + f'<body><div class="signin"><h1>runapi-mcp gallery</h1><p class="error">{_e(message)}</p>'
        f'<p><a href="{_e(base)}">Back to the newest images</a></p></div></body>\n</html>\n'
    )
