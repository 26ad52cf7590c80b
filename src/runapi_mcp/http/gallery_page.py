"""The web gallery's HTML: pure functions from plain view data to a page (``gallery.py`` serves them).

Every piece of text that reaches the page goes through :func:`_e` (``html.escape`` with quotes), text
content and attribute values alike: prompts, errors and model names are user or upstream text. Nothing
user-supplied is ever put inside ``<script>`` or ``<style>``; both are static and carry the response's
CSP nonce, so the page needs no ``'unsafe-inline'`` (and no inline handlers: the script finds its
elements itself). The page works without JavaScript (filters are a GET form, pages are links, a picture
links to its file); the script submits the form when a select changes, narrows the current page as one
types, shows times in the reader's time zone, opens a picture full size in a lightbox on the page (arrow
keys or a swipe move between pictures, Escape closes; ``#image-<id>`` in the address opens one), and
copies a prompt with one click. It reads what it shows from the page's own elements (their text, never
as HTML), so no value reaches it any other way.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, urlencode, urlsplit

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


_STYLE = """
:root { color-scheme: light dark; --bg: #f6f6f4; --card: #fff; --ink: #1d1d1f; --muted: #6b6b70;
  --line: #e2e2de; --accent: #2457c5; --warn: #a4441a; }
@media (prefers-color-scheme: dark) { :root { --bg: #141416; --card: #1e1e21; --ink: #ececee;
  --muted: #9a9aa2; --line: #2d2d31; --accent: #8bb0ff; --warn: #ff9d6e; } }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
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
.summary strong { color: var(--ink); font-weight: 600; }
ul.grid { list-style: none; padding: 0; margin: 0; display: grid; gap: 16px;
  grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); }
.tile { background: var(--card); border: 1px solid var(--line); border-radius: 10px; overflow: hidden;
  display: flex; flex-direction: column; min-width: 0; }
.tile:target { outline: 2px solid var(--accent); }
.thumb { display: flex; align-items: center; justify-content: center; aspect-ratio: 1; background: var(--line);
  cursor: zoom-in; }
.thumb img { max-width: 100%; max-height: 100%; width: auto; height: auto; display: block; }
.thumb.empty { color: var(--muted); font-size: 13px; padding: 16px; text-align: center; cursor: default; }
.meta { padding: 10px 12px 12px; display: flex; flex-direction: column; gap: 6px; flex: 1; min-width: 0; }
.prompt { margin: 0; display: -webkit-box; -webkit-line-clamp: 4; -webkit-box-orient: vertical; overflow: hidden;
  overflow-wrap: anywhere; white-space: pre-wrap; }
.prompt.none { color: var(--muted); font-style: italic; }
.source { margin: 0; font-size: 12px; color: var(--muted); display: flex; flex-wrap: wrap; gap: 4px 6px;
  align-items: center; }
.source img { width: 40px; height: 40px; object-fit: cover; border-radius: 4px; display: block;
  background: var(--line); }
.source a { overflow-wrap: anywhere; }
dl { margin: 0; display: grid; grid-template-columns: auto 1fr; gap: 2px 10px; font-size: 12px; color: var(--muted); }
dl > div { display: contents; }
dt { font-weight: 500; }
dd { margin: 0; overflow-wrap: anywhere; color: var(--ink); }
dd.id { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 11px; }
.status { display: inline-block; font-size: 11px; padding: 1px 8px; border-radius: 999px;
  border: 1px solid var(--line); }
.status.failed, .status.cancelled { color: var(--warn); border-color: var(--warn); }
.actions { margin-top: auto; display: flex; flex-wrap: wrap; gap: 6px 12px; font-size: 13px; align-items: center; }
.actions button, .lb-bar button { font: inherit; padding: 0; border: 0; background: none; color: var(--accent);
  cursor: pointer; text-decoration: underline; }
nav.pages { margin-top: 20px; display: flex; gap: 16px; }
.empty-state { color: var(--muted); padding: 40px 0; text-align: center; }
.signin { max-width: 30em; margin: 12vh auto; background: var(--card); border: 1px solid var(--line);
  border-radius: 10px; padding: 24px; }
.signin h1 { margin-bottom: 12px; }
.signin form { display: flex; gap: 8px; margin: 16px 0; }
.signin input { flex: 1; }
.error { color: var(--warn); }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
.offscreen { position: fixed; top: 0; left: -9999px; opacity: 0; }
dialog.lightbox { width: 100vw; height: 100vh; height: 100dvh; max-width: none; max-height: none; margin: 0;
  padding: 0; border: 0; background: rgba(12, 12, 14, 0.96); color: #ececee; overflow: hidden; }
dialog.lightbox[open] { display: grid; grid-template-rows: auto minmax(0, 1fr) auto; }
dialog.lightbox::backdrop { background: rgba(12, 12, 14, 0.96); }
.lightbox a, .lightbox .lb-bar button { color: #a9c3ff; }
.lb-bar { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 16px; padding: 10px 16px; }
.lb-count { color: #9a9aa2; font-variant-numeric: tabular-nums; }
.lb-tools { margin-left: auto; display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; }
.lb-bar button.lb-close { font-size: 26px; line-height: 1; text-decoration: none; padding: 0 4px; }
.lb-stage { position: relative; min-height: 0; display: flex; align-items: center; justify-content: center;
  padding: 0 56px; touch-action: pan-y pinch-zoom; }
.lb-stage img { width: 100%; height: 100%; object-fit: contain; display: block; }
.lb-stage img.loading { filter: blur(6px); }
.lb-nav { position: absolute; top: 50%; transform: translateY(-50%); width: 44px; height: 64px; border: 0;
  border-radius: 8px; background: rgba(255, 255, 255, 0.12); color: #fff; font-size: 32px; cursor: pointer; }
.lb-nav:disabled { opacity: 0.25; cursor: default; }
.lb-prev { left: 6px; }
.lb-next { right: 6px; }
.lb-caption { padding: 10px 16px 14px; max-height: 32vh; overflow: auto; }
.lb-prompt { margin: 0 0 6px; white-space: pre-wrap; overflow-wrap: anywhere; }
.lb-prompt.none { color: #9a9aa2; font-style: italic; }
.lb-meta { margin: 0 0 6px; color: #9a9aa2; font-size: 12px; }
.lightbox .source { color: #9a9aa2; }
@media (max-width: 600px) {
  header { padding: 10px 12px; gap: 8px 12px; }
  form.filters input[type=search] { min-width: 0; flex: 1 1 100%; max-width: none; }
  main { padding: 12px 10px 32px; }
  ul.grid { grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 8px; }
  .meta { padding: 8px; gap: 4px; font-size: 13px; }
  .prompt { -webkit-line-clamp: 3; }
  dl > div.extra { display: none; }
  .lb-stage { padding: 0; }
  .lb-nav { width: 36px; height: 52px; background: rgba(0, 0, 0, 0.35); }
}
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
  const promptOf = (tile) => {
    if (tile.dataset.prompt !== undefined) return tile.dataset.prompt;  // cut on the tile: whole here
    const text = tile.querySelector(".prompt:not(.none)");
    return text === null ? "" : text.textContent;
  };
  search.addEventListener("input", () => {
    const needle = search.value.trim().toLowerCase();
    let count = 0;
    for (const tile of tiles) {
      const hit = !needle || promptOf(tile).toLowerCase().includes(needle);
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

  // Copy a prompt: the Clipboard API where the page may use it (https, or loopback), else a selection.
  const box = document.getElementById("lightbox");
  const said = document.getElementById("said");
  const copyBySelection = (text) => {
    const area = document.createElement("textarea");
    area.value = text;
    area.readOnly = true;
    area.className = "offscreen";
    (box && box.open ? box : document.body).append(area);  // a modal dialog makes the rest inert
    area.select();
    let done = false;
    try {
      done = document.execCommand("copy");
    } catch (error) {
      done = false;
    }
    area.remove();
    return done;
  };
  const copyText = async (text) => {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch (error) {
        // denied: try the selection
      }
    }
    return copyBySelection(text);
  };
  const labels = new WeakMap();
  const timers = new WeakMap();
  const copied = (button, done) => {
    if (!labels.has(button)) labels.set(button, button.textContent);
    button.textContent = done ? "Copied" : "Could not copy";
    if (said) said.textContent = done ? "Prompt copied" : "The prompt could not be copied";
    clearTimeout(timers.get(button));
    timers.set(button, setTimeout(() => { button.textContent = labels.get(button); }, 1500));
  };
  for (const tile of tiles) {
    const button = tile.querySelector("button.copy");
    if (button === null) continue;
    button.hidden = false;
    button.addEventListener("click", async () => copied(button, await copyText(promptOf(tile))));
  }

  // The lightbox: a picture full size on this page; arrows (keys, buttons, a swipe) move, Escape closes.
  if (!box || typeof box.showModal !== "function") return;  // then a picture's link opens its file
  const part = (id) => document.getElementById(id);
  const image = part("lb-image");
  const stage = part("lb-stage");
  const prev = part("lb-prev");
  const next = part("lb-next");
  const copy = part("lb-copy");
  const download = part("lb-download");
  const original = part("lb-open");
  const pictures = () => tiles.filter((tile) => tile.dataset.image && !tile.hidden);
  let current = null;
  const show = (tile) => {
    const list = pictures();
    const index = list.indexOf(tile);
    if (index < 0) return;
    current = tile;
    const link = tile.querySelector("a.thumb");
    const thumb = link.querySelector("img");
    const file = tile.querySelector("a.download");
    image.classList.add("loading");
    image.src = thumb.currentSrc || thumb.src;  // at once; the full picture takes its place once loaded
    image.alt = thumb.alt;
    const full = new Image();
    full.addEventListener("load", () => {
      if (current !== tile) return;
      image.src = full.src;
      image.classList.remove("loading");
    });
    full.src = link.href;
    const text = promptOf(tile);
    part("lb-prompt").textContent = text || "(no prompt)";
    part("lb-prompt").classList.toggle("none", !text);
    copy.hidden = !text;
    const facts = [tile.dataset.model];
    for (const fact of tile.querySelectorAll("dd.size, dd time")) facts.push(fact.textContent);
    part("lb-meta").textContent = facts.join(" · ");
    const source = tile.querySelector(".source");
    part("lb-source").replaceChildren(...(source === null ? [] : [source.cloneNode(true)]));
    download.href = file.href;
    download.setAttribute("download", file.getAttribute("download") || "");
    original.href = link.href;
    part("lb-count").textContent = `${index + 1} / ${list.length}`;
    prev.disabled = index === 0;
    next.disabled = index === list.length - 1;
    if (index + 1 < list.length) new Image().src = list[index + 1].querySelector("a.thumb").href;  // ready
    history.replaceState(null, "", `${location.pathname}${location.search}#image-${tile.dataset.image}`);
    if (!box.open) box.showModal();
  };
  const step = (delta) => {
    if (current === null) return;
    const list = pictures();
    const index = list.indexOf(current) + delta;
    if (index >= 0 && index < list.length) show(list[index]);
  };
  document.addEventListener("click", (event) => {
    if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
    const link = event.target instanceof Element ? event.target.closest("a.thumb, a.source-link[data-image]") : null;
    if (link === null) return;
    const tile = link.matches("a.thumb") ? link.closest("li.tile") : part(`image-${link.dataset.image}`);
    if (tile === null || !pictures().includes(tile)) return;  // not on this page: the link goes to it
    event.preventDefault();
    show(tile);
  });
  prev.addEventListener("click", () => step(-1));
  next.addEventListener("click", () => step(1));
  part("lb-close").addEventListener("click", () => box.close());
  copy.addEventListener("click", async () => {
    if (current !== null) copied(copy, await copyText(promptOf(current)));
  });
  document.addEventListener("keydown", (event) => {
    if (!box.open || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
      event.preventDefault();
      step(event.key === "ArrowLeft" ? -1 : 1);
    }
  });
  box.addEventListener("click", (event) => {
    if (event.target === box || event.target === stage) box.close();  // the dark space around the picture
  });
  let touched = null;
  stage.addEventListener("touchstart", (event) => { touched = event.changedTouches[0].clientX; }, { passive: true });
  stage.addEventListener("touchend", (event) => {
    if (touched === null) return;
    const moved = event.changedTouches[0].clientX - touched;
    touched = null;
    if (Math.abs(moved) > 50) step(moved > 0 ? -1 : 1);
  });
  box.addEventListener("close", () => {
    const tile = current;
    current = null;
    image.removeAttribute("src");
    history.replaceState(null, "", `${location.pathname}${location.search}`);
    if (tile !== null) {
      const link = tile.querySelector("a.thumb");
      link.focus({ preventScroll: true });
      tile.scrollIntoView({ block: "nearest" });
    }
  });
  const wanted = /^#image-([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (wanted) {
    const tile = part(`image-${wanted[1]}`);
    if (tile !== null) show(tile);
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


_MADE_FROM = {"upscale_image": "Upscaled from", "edit_image": "Edited from", "remix_image": "Remixed from"}

# Static, no values: the script fills it from a tile's own elements.
_LIGHTBOX = (
    '<dialog id="lightbox" class="lightbox" aria-label="Picture">'
    '<div class="lb-bar"><span class="lb-count" id="lb-count"></span><span class="lb-tools">'
    '<button type="button" id="lb-copy">Copy prompt</button>'
    '<a id="lb-download" download>Download</a>'
    '<a id="lb-open" target="_blank" rel="noopener">Open the file</a>'
    '<button type="button" class="lb-close" id="lb-close" aria-label="Close (Esc)" title="Close (Esc)">×</button>'
    "</span></div>"
    '<div class="lb-stage" id="lb-stage">'
    '<button type="button" class="lb-nav lb-prev" id="lb-prev" aria-label="Previous picture" title="Previous (←)">‹'
    "</button>"
    '<img id="lb-image" alt="">'
    '<button type="button" class="lb-nav lb-next" id="lb-next" aria-label="Next picture" title="Next (→)">›</button>'
    "</div>"
    '<div class="lb-caption"><p class="lb-prompt" id="lb-prompt"></p><p class="lb-meta" id="lb-meta"></p>'
    '<div id="lb-source"></div></div></dialog>'
)


def source_link(base: str, source: Source) -> str:
    """Where a "made from" link goes: the source picture in the gallery (its task's page, opening it)."""
    assert source.task_id is not None and source.image_id is not None
    return f"{base}?{urlencode({'task': source.task_id})}#image-{source.image_id}"


def _sources(view: GalleryView, tile: Tile) -> str:
    """The "Upscaled from" line of an edit or an upscale: its source pictures, linked."""
    if not tile.sources:
        return ""
    base = view.base
    links = []
    for source in tile.sources[:SOURCES_SHOWN]:
        if source.image_id is not None and source.task_id is not None:
            inner = (
                f'<img src="{_e(base)}/thumbs/{_e(source.image_id)}" width="40" height="40" loading="lazy" '
                f'alt="the source picture">'
                if source.has_file
                else "a picture in this library"
            )
            links.append(
                f'<a class="source-link" href="{_e(source_link(base, source))}" data-image="{_e(source.image_id)}" '
                f'title="Task {_e(source.task_id)}">{inner}</a>'
            )
        elif source.url is not None:
            host = urlsplit(source.url).hostname or "elsewhere"
            links.append(
                f'<a class="source-link external" href="{_e(source.url)}" rel="noopener noreferrer" target="_blank" '
                f'title="Not in this library">an image at {_e(host)}</a>'
            )
    more = len(tile.sources) - SOURCES_SHOWN
    if more > 0:
        links.append(f"<span>and {more} more</span>")
    label = _MADE_FROM.get(tile.action, "Made from")
    return f'<p class="source"><span>{_e(label)}</span>{"".join(links)}</p>'


def _tile(view: GalleryView, tile: Tile, thumb_edge: int) -> str:
    base = view.base
    iso, utc = _when(tile.created_at)
    attributes = f'data-model="{_e(tile.model)}" data-status="{_e(tile.status)}"'
    if tile.prompt and len(tile.prompt) > PROMPT_SHOWN_CHARS:
        attributes += f' data-prompt="{_e(tile.prompt)}"'  # the whole prompt, for the lightbox and copying
    copy = '<button type="button" class="copy" hidden>Copy prompt</button>' if tile.prompt else ""
    if tile.image_id is not None:
        attributes = f'id="image-{_e(tile.image_id)}" data-image="{_e(tile.image_id)}" {attributes}'
        width, height = _thumb_box(tile, thumb_edge)
        alt = (tile.prompt or f"image of task {tile.task_id}")[:200]
        name, _ = download_names(tile.name_from or tile.prompt, tile.image_id, tile.mime_type)
        picture = (
            f'<a class="thumb" href="{_e(base)}/images/{_e(tile.image_id)}" title="Open full size">'
            f'<img src="{_e(base)}/thumbs/{_e(tile.image_id)}" width="{width}" height="{height}" '
            f'loading="lazy" decoding="async" alt="{_e(alt)}"></a>'
        )
        actions = (
            f'<div class="actions">{copy}<a class="download" href="{_e(base)}/download/{_e(tile.image_id)}" '
            f'download="{_e(name)}">Download</a></div>'
        )
    else:
        picture = f'<div class="thumb empty">{_e(tile.note or "No image in the library")}</div>'
        actions = f'<div class="actions">{copy}</div>' if copy else ""
    if tile.prompt:
        shown = tile.prompt if len(tile.prompt) <= PROMPT_SHOWN_CHARS else tile.prompt[:PROMPT_SHOWN_CHARS] + "…"
        prompt = f'<p class="prompt">{_e(shown)}</p>'
    else:
        prompt = '<p class="prompt none">(no prompt)</p>'
    status = "" if tile.status == "completed" else f' <span class="status {_e(tile.status)}">{_e(tile.status)}</span>'
    note = f'<div class="extra"><dt>Note</dt><dd>{_e(tile.note)}</dd></div>' if tile.note and tile.image_id else ""
    return (
        f'<li class="tile" {attributes}>{picture}'
        f'<div class="meta">{prompt}{_sources(view, tile)}<dl>'
        f'<div><dt>Model</dt><dd class="model">{_e(tile.model)}{status}</dd></div>'
        f'<div class="extra"><dt>Time</dt><dd><time datetime="{_e(iso)}">{_e(utc)}</time></dd></div>'
        f'<div class="extra"><dt>Price</dt><dd>{_e(_price(tile.price_cents))}</dd></div>'
        f'<div class="extra"><dt>Size</dt><dd class="size">{_e(_size(tile))}</dd></div>'
        f'<div class="extra"><dt>Task</dt><dd class="id">{_e(tile.task_id)}</dd></div>{note}'
        f"</dl>{actions}</div></li>"
    )


def _pictures(count: int) -> str:
    return counted(count, "picture")


def _summary(view: GalleryView) -> str:
    """How many pictures match (on every page), and which page this is."""
    filters = view.filters
    parts = []
    if view.count is not None:
        if filters.task:
            parts.append(
                f'<strong id="count">{_e(_pictures(view.count))}</strong> of task <code>{_e(filters.task)}</code>'
            )
        elif filters.query():
            parts.append(f'<strong id="count">{_e(_pictures(view.count))}</strong> match')
        else:
            parts.append(f'<strong id="count">{_e(_pictures(view.count))}</strong> in the library')
    parts.append("newest first" + ("" if view.first_page else " (an older page)") if parts else "Newest first")
    text = ", ".join(parts)
    if view.scan_note:
        text += f". {_e(view.scan_note)}"
    if filters.task:
        text += f'. <a href="{_e(view.base)}">All pictures</a>'
    return text


def render_gallery(view: GalleryView, nonce: str, *, thumb_edge: int) -> str:
    """The gallery page: filters, the count, the grid, the link to the next (older) page, the lightbox."""
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
    pages = []
    if not view.first_page:
        pages.append(f'<a href="{_e(base + filters.query())}">Newest</a>')
    if view.next_cursor:
        pages.append(f'<a rel="next" href="{_e(base + filters.query(cursor=view.next_cursor))}">Older →</a>')
    nav = f'<nav class="pages">{"".join(pages)}</nav>' if pages else ""
    lightbox = _LIGHTBOX if any(tile.image_id is not None for tile in view.tiles) else ""
    return (
        _head(base, "runapi-mcp gallery", nonce)
        + "<body>\n"
        + header
        + f'<main><p class="summary">{_summary(view)}. <span id="shown" aria-live="polite"></span></p>\n'
        + grid
        + nav
        + "</main>\n"
        + lightbox
        + '<p class="offscreen" id="said" aria-live="polite"></p>'
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
