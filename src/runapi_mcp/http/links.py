"""Signed links to full-size images: ``/files/{image_id}?exp=...&sig=...``.

A tool result over HTTP links each picture at this server. A bearer header cannot ride along when a
person opens that link in a browser tab (the MCP Apps view's "open full image", a link in a chat), so
the link carries its own proof instead: an HMAC over the image's owner, its id and an expiry, with a key
this process made at start. It opens that one picture, for its lifetime (a day), to whoever holds it,
like any presigned URL; a plain ``/files/{image_id}`` still needs the bearer token. A restart changes
the key: a link from before it asks for the token again (get_task gives a fresh one).

With a task store several instances share (PostgreSQL), a link made by one instance may be opened on any
other: the key is kept in the store (:func:`shared_file_links`), made by the first instance that needed
it (one step, so instances starting together agree), and outlives restarts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import quote

from runapi_mcp.clock import SYSTEM_CLOCK, Clock
from runapi_mcp.tasks import TaskStore

LINK_TTL_S = 24 * 3600
# The base URL clients reach this server at (the public URL when set, else the request's own), in the
# ASGI scope of every request: links are made under it, and cookies are Secure when it is https.
PUBLIC_BASE_SCOPE_KEY = "runapi_mcp.public_base"
_SIG_BYTES = 24
_KEY_BYTES = 32
_SHARED_KEY_STATE = "http.file_link_key"  # in the store's state: the key, base64


class FileLinks:
    """Makes and checks signed image links."""

    def __init__(self, *, key: bytes | None = None, ttl_s: float = LINK_TTL_S, clock: Clock = SYSTEM_CLOCK) -> None:
        """``key``: the signing key (None: one of this process's own, made now)."""
        self._key = key if key is not None else secrets.token_bytes(_KEY_BYTES)
        self._ttl_s = ttl_s
        self._clock = clock

    def url(self, files_url: str, owner: str, image_id: str) -> str:
        """The signed link to ``image_id`` under ``files_url`` (``https://host/files``)."""
        expires = int(self._clock.time() + self._ttl_s)
        return f"{files_url}/{quote(image_id, safe='')}?exp={expires}&sig={self._sign(owner, image_id, expires)}"

    def check(self, owner: str, image_id: str, exp: str | None, sig: str | None) -> bool:
        """Whether ``sig`` is this process's signature of ``owner``/``image_id``/``exp`` and not expired."""
        if not exp or not sig or not exp.isdigit() or len(exp) > 12 or len(sig) > 64:
            return False
        if int(exp) < self._clock.time():
            return False
        return hmac.compare_digest(sig, self._sign(owner, image_id, int(exp)))

    def _sign(self, owner: str, image_id: str, expires: int) -> str:
        message = f"{owner}\n{image_id}\n{expires}".encode("utf-8", "surrogatepass")
        digest = hmac.new(self._key, message, hashlib.sha256).digest()[:_SIG_BYTES]
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


async def shared_file_links(store: TaskStore, clock: Clock = SYSTEM_CLOCK) -> FileLinks:
    """The links of a server on ``store``: signed with the key every instance sharing it uses, when it is
    shared; else with a key of this process's own."""
    if not store.shared:
        return FileLinks(clock=clock)
    made = base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode("ascii")
    kept = await store.setdefault_state(_SHARED_KEY_STATE, made)
    try:
        key = base64.b64decode(kept, validate=True) if isinstance(kept, str) else b""
    except ValueError:
        key = b""
    if len(key) < _KEY_BYTES:  # not one this code wrote: replaced, which ends the links signed with it
        key = base64.b64decode(made)
        await store.save_state(_SHARED_KEY_STATE, made)
    return FileLinks(key=key, clock=clock)
