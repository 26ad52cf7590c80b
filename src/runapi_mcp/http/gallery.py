"""The web gallery: the library in a browser, at ``/gallery``.

Two ways to reach it:

- ``runapi-mcp gallery`` (:func:`serving_gallery`) serves only the gallery on loopback, for stdio users. It
  opens the task store and the image library read-mostly; no task manager runs (a stdio server on the
  same home polls its own tasks), so it needs no RunAPI key and spends nothing. No auth: only this
  machine can connect, and the Host/Origin check (``hosts.py``) keeps other sites' pages out.
- ``runapi-mcp serve --transport http|streamable-http|sse`` mounts the same routes beside ``/files``.

Each caller sees only their own tasks and images (the owner ``http.app`` puts in ``current_owner``: a
JWT's subject, or the local owner for the shared token); another owner's image is 404, exactly as one
that does not exist.

Browser auth. A browser cannot send an ``Authorization`` header from the address bar, so the gallery
(and only the gallery: ``/files`` and ``/mcp`` never read it) also takes the same bearer token from a
cookie. Only the sign-in form sets it (``POST /gallery/login``), and only when the browser says the
POST comes from this server's own page (``Sec-Fetch-Site: same-origin``, else a matching ``Origin``).
A token in a URL never signs anyone in: ``GET /gallery?token=...`` shows the form filled in, naming
whom the token signs in as, and waits for the visitor's own click. Otherwise any page on another site
could navigate a visitor there and sign their browser in to the gallery as the other site's user
(login CSRF; loopback ports are all one "site", so ``SameSite`` alone does not stop a page on another
port). The pages send ``Referrer-Policy: same-origin``: with ``no-referrer`` Chromium sends
``Origin: null`` on the form's own POST, which the Origin check must refuse.

The cookie is HttpOnly, SameSite=Strict, scoped to ``Path=/gallery``, Secure over HTTPS, and lives as
long as the token is accepted (a JWT's ``exp`` plus the verifier's leeway; the shared token:
:data:`SHARED_COOKIE_MAX_AGE_S`). It holds the token itself, checked by the same verifier on every
request, so a rotated shared token or an expired JWT ends the session at once and no session state is
kept. The token is never logged.

What the page shows besides the grid comes from the store, for this owner only: how many pictures
match the filters (``TaskStore.count_pictures``, on every page), the models of the filter (those of the
owner's tasks: ``TaskStore.models``), and what an edit or an upscale was made from. Its task's request
holds its sources' URLs (``IMAGE_FIELDS``); a library picture is used by its RunAPI URL for a day after it
was made (``tasks/references.py``), so a source whose URL is one of the owner's outputs
(``TaskStore.outputs_at``) links to that picture in the gallery (``?task=<its task>#image-<id>``); any
other source links to where RunAPI fetched it. A picture uploaded again later (older than a day, or a
local file) is an upload URL and is shown as such. A download is named from its prompt
(:func:`gallery_page.download_names`).

Thumbnails are ``ImageStore`` previews at their own size (:data:`THUMB_EDGE`), so they are made once,
under the process-wide decode budget of ``tasks/previews.py``, and cached in the library's
``.previews/`` beside the MCP previews.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken, TokenVerifier
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from runapi_mcp.app import open_store
from runapi_mcp.catalog import is_http_url
from runapi_mcp.catalog._catalog import IMAGE_FIELDS
from runapi_mcp.config import ConfigError, Settings, is_loopback_host
from runapi_mcp.http.auth import SHARED_TOKEN_CLIENT_ID, owner_of
from runapi_mcp.http.gallery_page import (
    Filters,
    GalleryView,
    SignInLink,
    Source,
    Tile,
    content_disposition,
    gallery_context,
    problem_context,
    signin_context,
)
from runapi_mcp.http.hosts import HostCheck, transport_security
from runapi_mcp.http.links import PUBLIC_BASE_SCOPE_KEY
from runapi_mcp.http.owner import OwnerScope
from runapi_mcp.http.responses import IMMUTABLE_CACHE, image_headers
from runapi_mcp.http.templating import templates
from runapi_mcp.http.uvicorn_server import Serving, bind_socket, serving
from runapi_mcp.tasks import (
    ImageRecord,
    ImageStore,
    InvalidCursorError,
    Preview,
    TaskRecord,
    TaskState,
    TaskStore,
    current_owner,
)
from runapi_mcp.tasks.images import valid_image_id
from runapi_mcp.tasks.previews import make_preview
from runapi_mcp.tasks.records import STATES
from runapi_mcp.tasks.store import encode_cursor, library_pictures, prompt_holds
from runapi_mcp.wording import count

log = logging.getLogger("runapi_mcp.http.gallery")

GALLERY_PATH = "/gallery"
COOKIE_NAME = "runapi_gallery"
SHARED_COOKIE_MAX_AGE_S = 7 * 86400  # the shared token does not expire; the browser session does
PAGE_TASKS = 24
THUMB_EDGE = 512  # twice the grid's cell width, for high-density screens
THUMB_BYTES = 150_000
# A text search reads the owner's tasks page by page and filters the prompts here (the store has no
# text index). One request reads at most SCAN_LIMIT tasks; past that the page links on from where
# the search stopped, so no request's work grows with the size of the history.
SCAN_BATCH = 200
SCAN_LIMIT = 5000
MAX_QUERY_CHARS = 200
MAX_SOURCES = 16  # the URLs of one task's request looked up (an edit takes at most 16 pictures)
MAX_FORM_BYTES = 16 * 1024
_DONE = {"upscale_image": "upscaled", "reframe_image": "reframed", "remove_background": "cut out"}  # name words
_TARGET_PARAMS = frozenset({"q", "model", "status", "task", "cursor"})  # what a sign-in may carry on to the page

_PAGE_CSP = (
    "default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Images (and the placeholder) opened on their own: nothing may run or load in that document.
_IMAGE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'; sandbox"
_COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Nothing to other sites; this server's own requests carry their Origin (see the module docstring).
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    # Another site's page may not embed these (an <img> of a loopback gallery needs no cookie).
    "Cross-Origin-Resource-Policy": "same-origin",
}
_NO_PREVIEW_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512" viewBox="0 0 512 512">'
    b'<rect width="512" height="512" fill="#d8d8d4"/><text x="256" y="262" font-family="sans-serif" '
    b'font-size="28" text-anchor="middle" fill="#55555a">no preview</text></svg>'
)

_FAVICON_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="6" '
    b'fill="#2457c5"/><path d="M6 24l7-9 5 6 3-4 5 7z" fill="#fff"/><circle cx="22" cy="10" r="3" fill="#fff"/></svg>'
)


@dataclass(frozen=True)
class _Caller:
    owner: str
    signed_in: bool  # by the cookie (offer "Sign out")


class Gallery:
    """The gallery's routes over a task store and an image library.

    ``verifier``: the HTTP server's bearer verifier (the cookie's token is checked with it); None when
    the server has no auth (loopback only), and then every caller is the local owner.
    """

    def __init__(self, store: TaskStore, images: ImageStore, verifier: TokenVerifier | None = None) -> None:
        self.store = store
        self.images = images
        self.verifier = verifier

    def routes(self) -> list[BaseRoute]:
        base = GALLERY_PATH
        return [
            Route(base, self.page, methods=["GET"]),
            Route(base + "/thumbs/{image_id}", self.thumb, methods=["GET"]),
            Route(base + "/images/{image_id}", self.full, methods=["GET"]),
            Route(base + "/download/{image_id}", self.download, methods=["GET"]),
            Route(base + "/login", self.login, methods=["POST"]),
            Route(base + "/logout", self.logout, methods=["POST"]),
            Route(base + "/favicon.svg", _favicon, methods=["GET"]),  # static; else the browser asks /favicon.ico
        ]

    # -- auth ------------------------------------------------------------------------------------

    async def _verify(self, token: str) -> AccessToken | None:
        """The verified token, or None. Same checks as the bearer header gets (``BearerAuthBackend``)."""
        if self.verifier is None or not token:
            return None
        access = await self.verifier.verify_token(token)
        if access is None or (access.expires_at is not None and access.expires_at < int(time.time())):
            return None
        try:
            owner_of(access)
        except ValueError:
            return None
        return access

    async def _caller(self, request: Request) -> _Caller | None:
        """Who is asking, or None (not signed in)."""
        user = request.scope.get("user")
        if isinstance(user, AuthenticatedUser):
            # A valid Authorization header: the owner http.owner.OwnerScope put in current_owner, taken
            # from the token itself so that it cannot depend on the order of the middleware.
            return _Caller(owner_of(user.access_token), signed_in=False)
        if self.verifier is None:
            return _Caller(current_owner.get(), signed_in=False)  # no auth: loopback, the local owner
        token = _cookie_token(request)
        access = await self._verify(token) if token else None
        return _Caller(owner_of(access), signed_in=True) if access is not None else None

    def _refused(self, request: Request, *, error: str | None = None) -> Response:
        """401 with the sign-in page. ``error``: a token just offered was refused (a session the
        cookie may hold is left alone); without it, the cookie itself failed and is cleared."""
        response = _html(request, "signin.html", signin_context(GALLERY_PATH, _nonce(), error=error), status=401)
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        if error is None and COOKIE_NAME in request.cookies:
            _clear_cookie(response, request)  # expired or rotated: drop it rather than send it again
        return response

    def _signed_in(self, request: Request, access: AccessToken | None, target: str) -> Response:
        """A redirect to ``target`` that keeps ``access`` in the gallery cookie (when there is auth)."""
        response = RedirectResponse(target, status_code=303)
        response.headers.update(_COMMON_HEADERS)
        response.headers["Cache-Control"] = "no-store"
        if access is not None:
            log.info("gallery: browser session for %s", owner_of(access) or "the shared token")  # never the token
            max_age = SHARED_COOKIE_MAX_AGE_S
            if access.expires_at is not None:
                max_age = max(0, min(max_age, int(access.expires_at - time.time())))
            response.set_cookie(
                COOKIE_NAME,
                base64.urlsafe_b64encode(access.token.encode("utf-8", "surrogatepass")).decode().rstrip("="),
                max_age=max_age,
                path=GALLERY_PATH,
                secure=_is_https(request),
                httponly=True,
                samesite="strict",
            )
        return response

    async def login(self, request: Request) -> Response:
        """``POST /gallery/login`` (the sign-in form): check the token, keep it in the cookie.

        The one way in for a browser, and only from this server's own page (:func:`_same_origin`).
        """
        if not _same_origin(request):
            return _plain(403, "cross-site sign-in refused")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return _plain(413, "form too large")
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        token = form.get("token", "").strip()
        target = _gallery_target(form.get("next", ""))
        if self.verifier is None:
            return self._signed_in(request, None, target)
        access = await self._verify(token)
        if access is None:
            return self._refused(request, error="That token was not accepted.")
        return self._signed_in(request, access, target)

    async def logout(self, request: Request) -> Response:
        if not _same_origin(request):
            return _plain(403, "cross-site sign-out refused")
        response = RedirectResponse(GALLERY_PATH, status_code=303)
        response.headers.update(_COMMON_HEADERS)
        _clear_cookie(response, request)
        return response

    async def _token_link(self, request: Request) -> Response:
        """``GET /gallery?token=...``: never a session by itself (whoever made the link may be another
        site signing this browser in as its own user). A good token opens the sign-in form filled in,
        saying whom it signs in as; the visitor's click on it (a same-origin POST) signs in."""
        params = request.query_params
        rest = urlencode([(k, v) for k, v in params.multi_items() if k != "token"])
        target = GALLERY_PATH + (f"?{rest}" if rest else "")
        if self.verifier is None:  # no auth here: nothing to sign in to, only a URL to clean
            cleaned = RedirectResponse(target, status_code=303)
            cleaned.headers.update(_COMMON_HEADERS)
            return cleaned
        token = params["token"].strip()
        access = await self._verify(token)
        if access is None:
            return self._refused(request, error="That token was not accepted.")
        shared = access.subject is None and access.client_id == SHARED_TOKEN_CLIENT_ID
        link = SignInLink(token=token, who=None if shared else owner_of(access), next=target)
        return _html(request, "signin.html", signin_context(GALLERY_PATH, _nonce(), link=link))

    # -- the page --------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        params = request.query_params
        if "token" in params:
            return await self._token_link(request)
        caller = await self._caller(request)
        if caller is None:
            return self._refused(request)
        filters = _filters(params.get("q"), params.get("model"), params.get("status"), params.get("task"))
        try:
            records, next_cursor, note = await self._records(caller.owner, filters, params.get("cursor") or None)
        except InvalidCursorError as exc:
            return _html(request, "problem.html", problem_context(GALLERY_PATH, _nonce(), str(exc)), status=400)
        if filters.task:
            count = sum(library_pictures(record) for record in records)
        else:
            count = await self.store.count_pictures(
                owner=caller.owner,
                status=cast("TaskState | None", filters.status or None),
                model=filters.model or None,
                text=filters.q or None,
            )
        models = await self.store.models(owner=caller.owner)
        if filters.model and filters.model not in models:
            models = [filters.model, *models]  # asked for by a link: shown as chosen
        sources = await self._sources(caller.owner, records)
        names = {record.task_id: await self._name_from(caller.owner, record, sources) for record in records}
        view = GalleryView(
            base=GALLERY_PATH,
            tiles=[tile for record in records for tile in _tiles(record, sources, names[record.task_id])],
            filters=filters,
            models=models,
            statuses=STATES,
            next_cursor=next_cursor,
            first_page=not params.get("cursor"),
            scan_note=note,
            signed_in=caller.signed_in,
            count=count,
        )
        return _html(request, "gallery.html", gallery_context(view, _nonce(), thumb_edge=THUMB_EDGE))

    async def _records(
        self, owner: str, filters: Filters, cursor: str | None
    ) -> tuple[list[TaskRecord], str | None, str | None]:
        """One page of the owner's tasks, newest first: (records, the next page's cursor, a note)."""
        if filters.task:  # one task (what a "made from" link opens): the owner's own, else none
            record = await self.store.get(filters.task)
            return ([record] if record is not None and record.owner == owner else []), None, None
        status = cast("TaskState | None", filters.status or None)  # one of STATES (_filters checked it)
        model = filters.model or None
        if not filters.q:
            page = await self.store.page(owner=owner, status=status, model=model, limit=PAGE_TASKS, cursor=cursor)
            return page.records, page.next_cursor, None
        found: list[TaskRecord] = []
        scanned = 0
        last: TaskRecord | None = None
        while scanned < SCAN_LIMIT:
            page = await self.store.page(owner=owner, status=status, model=model, limit=SCAN_BATCH, cursor=cursor)
            for record in page.records:
                scanned += 1
                last = record
                if prompt_holds(record, filters.q):
                    found.append(record)
                    if len(found) > PAGE_TASKS:  # one more than shown: there is a next page
                        shown = found[:PAGE_TASKS]
                        return shown, encode_cursor(shown[-1]), None
            if page.next_cursor is None:
                return found, None, None
            cursor = page.next_cursor
        assert last is not None
        return found, encode_cursor(last), f"Searched {count(scanned, 'task')}; older ones are on the next page"

    async def _sources(self, owner: str, records: list[TaskRecord]) -> dict[str, ImageRecord]:
        """The owner's outputs the records' requests name by URL (what they were made from), by URL."""
        urls = {url for record in records for url in _request_images(record)}
        return await self.store.outputs_at(urls, owner=owner) if urls else {}

    async def _name_from(self, owner: str, record: TaskRecord, sources: dict[str, ImageRecord]) -> str | None:
        """What the task's downloads are named from: its prompt; for one without (an upscale), its first
        library source's prompt, after what was done to it ("upscaled a red fox ...")."""
        if record.prompt:
            return record.prompt
        for url in _request_images(record):
            image = sources.get(url)
            made = await self.store.get(image.task_id) if image is not None else None
            if made is not None and made.owner == owner and made.prompt:
                return f"{_DONE.get(record.action, 'from')} {made.prompt}"
        return None

    # -- pictures --------------------------------------------------------------------------------

    async def _image(self, request: Request) -> tuple[ImageRecord, TaskRecord] | Response:
        """The requested image and its task if the caller may see it; else the response to send."""
        caller = await self._caller(request)
        if caller is None:
            return self._refused(request)
        image_id = str(request.path_params.get("image_id", ""))
        found = await self._visible(caller.owner, image_id)
        return _plain(404, "no such image") if found is None else found

    async def _visible(self, owner: str, image_id: str) -> tuple[ImageRecord, TaskRecord] | None:
        """A library image of one of ``owner``'s tasks, and the task; None as for one that does not exist.

        Stricter than ``TaskManager.find_image``: the gallery serves only images it lists, so an image
        must be one of its task's recorded outputs (a library file with no task record is not shown).
        """
        if not valid_image_id(image_id):
            return None
        image = await self.images.lookup(image_id)
        if image is None or not image.task_id:
            return None
        record = await self.store.get(image.task_id)
        if record is None or record.owner != owner or all(i.id != image.id for i in record.images):
            return None
        return image, record

    async def thumb(self, request: Request) -> Response:
        found = await self._image(request)
        if isinstance(found, Response):
            return found
        image, _ = found
        made = await make_preview(self.images, image, THUMB_EDGE, THUMB_BYTES)
        if isinstance(made, Preview):
            response = Response(made.data, media_type=made.mime_type)
            # An image id names one picture for ever, and so does its thumbnail.
            response.headers["Cache-Control"] = IMMUTABLE_CACHE
        else:
            response = Response(_NO_PREVIEW_SVG, media_type="image/svg+xml")
            response.headers["Cache-Control"] = "private, max-age=300"
        response.headers.update(_COMMON_HEADERS)
        response.headers["Content-Security-Policy"] = _IMAGE_CSP
        return response

    async def full(self, request: Request) -> Response:
        return await self._file(request, "inline")

    async def download(self, request: Request) -> Response:
        return await self._file(request, "attachment")

    async def _file(self, request: Request, disposition: Literal["inline", "attachment"]) -> Response:
        found = await self._image(request)
        if isinstance(found, Response):
            return found
        image, record = found
        data = await self.images.read(image.id)
        if data is None:
            return _plain(404, "no such image")
        response = Response(data, media_type=image.mime_type or "application/octet-stream")
        response.headers.update(_COMMON_HEADERS)
        response.headers["Content-Security-Policy"] = _IMAGE_CSP
        response.headers.update(image_headers(image, disposition))
        # Saved under a name from its prompt, from the download link or from the picture shown.
        named = record.prompt or await self._name_from(
            record.owner, record, await self._sources(record.owner, [record])
        )
        response.headers["Content-Disposition"] = content_disposition(named, image.id, image.mime_type, disposition)
        return response


# -- helpers -------------------------------------------------------------------------------------


def _printable(value: str | None, limit: int) -> str:
    value = (value or "").strip()
    return value if len(value) <= limit and value.isprintable() else ""


def _filters(q: str | None, model: str | None, status: str | None, task: str | None = None) -> Filters:
    """The filters the page accepts; anything else is dropped (shown as "any")."""
    q = (q or "").strip()[:MAX_QUERY_CHARS]
    return Filters(
        q=q,
        model=_printable(model, 200),
        status=status if status in STATES else "",
        task=_printable(task, 512),
    )


def _request_images(record: TaskRecord) -> Iterator[str]:
    """The http(s) URLs of the pictures the task was made from, as its request sent them (at most
    :data:`MAX_SOURCES`)."""
    found = 0
    for name in IMAGE_FIELDS:
        value = record.request.get(name)
        for url in value if isinstance(value, list) else [value]:
            if isinstance(url, str) and is_http_url(url) and found < MAX_SOURCES:
                found += 1
                yield url


def _source(url: str, sources: dict[str, ImageRecord]) -> Source:
    image = sources.get(url)
    if image is None:
        return Source(url=url)
    return Source(image_id=image.id, task_id=image.task_id, has_file=image.path is not None)


def _tiles(record: TaskRecord, sources: dict[str, ImageRecord], name_from: str | None = None) -> list[Tile]:
    common = {
        "task_id": record.task_id,
        "model": record.model,
        "status": record.status,
        "prompt": record.prompt,
        "created_at": record.created_at,
        "price_cents": record.price_cents,
        "action": record.action,
        "sources": tuple(_source(url, sources) for url in _request_images(record)),
        "name_from": name_from,
    }
    saved = [image for image in record.images if image.path]
    if not saved:
        if record.status == "completed":
            note = "Not downloaded into the library"
        elif record.status in ("failed", "cancelled"):
            note = record.error or record.status.capitalize()
        else:
            note = f"{record.status.capitalize()}…"
        return [Tile(**common, note=note)]  # type: ignore[arg-type]
    many = len(record.images) > 1
    return [
        Tile(
            **common,  # type: ignore[arg-type]
            image_id=image.id,
            width=image.width,
            height=image.height,
            bytes=image.bytes,
            mime_type=image.mime_type,
            note=f"Image {image.index + 1} of {len(record.images)}" if many else None,
        )
        for image in saved
    ]


def _cookie_token(request: Request) -> str | None:
    raw = request.cookies.get(COOKIE_NAME)
    if not raw or len(raw) > 16 * 1024:
        return None
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def _clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE_NAME, path=GALLERY_PATH, secure=_is_https(request), httponly=True, samesite="strict")


def _is_https(request: Request) -> bool:
    # Behind a TLS-terminating proxy the request may arrive as http: the public URL says how clients
    # reach this server (http.app puts it, or the request's own base, under PUBLIC_BASE_SCOPE_KEY).
    base = request.scope.get(PUBLIC_BASE_SCOPE_KEY)
    return request.url.scheme == "https" or (isinstance(base, str) and base.startswith("https://"))


def _same_origin(request: Request) -> bool:
    """A browser's POST from this server's own page (or no browser at all: no Origin, no Sec-Fetch-Site).

    Stops another site from signing a visitor in to a gallery under the other site's token (login CSRF),
    or out. ``Sec-Fetch-Site`` is set by the browser and no page can change it: when present it decides
    (``same-site`` is not enough: every port of 127.0.0.1 is one site). Without it (an older browser) the
    ``Origin`` must be this server's host.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site == "same-origin"
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser: no page of another site is involved
    host = request.headers.get("host", "")
    return origin != "null" and urlsplit(origin).netloc.lower() == host.lower()


def _gallery_target(next_url: str) -> str:
    """Where a sign-in goes on to: the gallery with the filters the link or page had, nothing else (no
    other path, host or scheme: the form's ``next`` is only a convenience, never a redirect anywhere)."""
    parts = urlsplit(next_url[:2048])
    if parts.scheme or parts.netloc or parts.path != GALLERY_PATH:
        return GALLERY_PATH
    kept = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k in _TARGET_PARAMS])
    return GALLERY_PATH + (f"?{kept}" if kept else "")


async def _favicon(_: Request) -> Response:
    response = Response(_FAVICON_SVG, media_type="image/svg+xml")
    response.headers.update(_COMMON_HEADERS)
    response.headers["Content-Security-Policy"] = _IMAGE_CSP
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


def _nonce() -> str:
    return secrets.token_urlsafe(16)  # per response: the page's CSP allows its own style and script only


def _html(request: Request, template: str, context: dict[str, Any], *, status: int = 200) -> Response:
    """A page from ``templates/`` (escaped: see ``http/templating.py``) with the headers every page gets."""
    response = templates.TemplateResponse(request, template, context, status_code=status)
    _page_headers(response, context["nonce"])
    return response


def _page_headers(response: Response, nonce: str) -> None:
    response.headers.update(_COMMON_HEADERS)
    response.headers["Content-Security-Policy"] = _PAGE_CSP.format(nonce=nonce)
    response.headers["Cache-Control"] = "no-store"  # private, and the nonce is per response


def _plain(status: int, text: str) -> Response:
    response = Response(text + "\n", status_code=status, media_type="text/plain")
    response.headers.update(_COMMON_HEADERS)
    return response


# -- runapi-mcp gallery --------------------------------------------------------------------------


def standalone_app(store: TaskStore, images: ImageStore, host: str) -> Starlette:
    """The gallery alone, with no auth, behind the Host/Origin check (loopback names only)."""

    async def home(_: Request) -> Response:
        return RedirectResponse(GALLERY_PATH, status_code=307)

    routes: list[BaseRoute] = [Route("/", home, methods=["GET"]), *Gallery(store, images).routes()]
    middleware = [Middleware(HostCheck, settings=transport_security(host, None)), Middleware(OwnerScope, local=True)]
    return Starlette(routes=routes, middleware=middleware)


@dataclass
class RunningGallery:
    """A serving gallery: its URL, and an event set once it has stopped (a signal, or ``stop()``)."""

    url: str
    serving: Serving

    @property
    def stopped(self) -> anyio.Event:
        return self.serving.stopped

    def stop(self) -> None:
        self.serving.stop()


@asynccontextmanager
async def serving_gallery(
    settings: Settings, host: str, port: int, *, fallback: bool = False
) -> AsyncIterator[RunningGallery]:
    """Serve the gallery of ``settings.home`` on loopback for as long as the block lasts.

    SIGINT and SIGTERM stop the server (uvicorn's handlers, without its re-raise: the store is closed
    on the way out); ``stopped`` is set then.
    """
    if not is_loopback_host(host):
        raise ConfigError(
            f"the gallery has no auth, so it serves on loopback only, not {host}; to share it, use "
            "`runapi-mcp serve --transport http` with RUNAPI_MCP_AUTH_TOKEN (its /gallery needs the token)"
        )
    try:
        sock = bind_socket(host, port, fallback=fallback)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = int(sock.getsockname()[1])
    shown = f"[{host}]" if ":" in host else host
    try:
        async with open_store(settings) as store:
            images = ImageStore(settings.images_dir, max_bytes=settings.max_output_bytes)
            app = standalone_app(store, images, host)
            async with serving(app, sock, failure=f"could not serve the gallery on {host}:{bound}") as running:
                yield RunningGallery(f"http://{shown}:{bound}{GALLERY_PATH}", running)
    finally:
        sock.close()
