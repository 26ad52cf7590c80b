"""Whose request this is: the owner every MCP handler runs as, set here for each request.

Over HTTP the transport authenticates the request and leaves its owner in the ASGI scope under
:data:`OWNER_SCOPE_KEY` (``http.app``); a request with no HTTP behind it (stdio, in-process) is the local
user's. This middleware, the first of ours, puts that owner in ``current_owner`` for the handler's
duration, so the manager, the history and the resources all see the same caller. An HTTP request that
reaches it with no owner in its scope is refused, never served as the local user.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR

from runapi_mcp.tasks import LOCAL_OWNER, TaskPage, TaskState, TaskStore, current_owner

OWNER_SCOPE_KEY = "runapi_mcp.owner"
FILE_LINK_SCOPE_KEY = "runapi_mcp.file_link"  # how this request's client fetches full images (HTTP)

FileLink = Callable[[str], str]
"""An image id -> the URL its full-size picture is fetched at (over HTTP: a signed link)."""

# Over HTTP, how results link each full-size picture at this server; None over stdio, where the file
# path is the link.
current_file_link: ContextVar[FileLink | None] = ContextVar("runapi_mcp_file_link", default=None)


async def owned_page(
    store: TaskStore,
    *,
    status: TaskState | None = None,
    model: str | None = None,
    limit: int,
    cursor: str | None = None,
) -> TaskPage:
    """One page of the current caller's tasks (``TaskStore.page`` filtered by ``current_owner``, always:
    every listing a client sees goes through here, so none shows another user's tasks)."""
    return await store.page(status=status, model=model, limit=limit, cursor=cursor, owner=current_owner.get())


def _http_scope(ctx: ServerRequestContext[Any, Any]) -> dict[str, Any] | None:
    """The ASGI scope of the HTTP request this MCP request came in (None: no HTTP behind it)."""
    scope = getattr(ctx.request, "scope", None)
    return scope if isinstance(scope, dict) else None


def request_owner(ctx: ServerRequestContext[Any, Any]) -> str:
    """Whose request ``ctx`` is: over HTTP the owner ``http.app`` verified (an HTTP request without one
    is refused: it came some way that skipped the check); over stdio or in-process the local user."""
    scope = _http_scope(ctx)
    if scope is None:
        return LOCAL_OWNER
    owner = scope.get(OWNER_SCOPE_KEY)
    if not isinstance(owner, str):
        raise MCPError(code=INTERNAL_ERROR, message="this HTTP request carries no verified owner; it is refused")
    return owner


async def owner_scope(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Middleware: run the request as its owner (and with its way of linking full images)."""
    with current_owner.scope(request_owner(ctx)):
        link = (_http_scope(ctx) or {}).get(FILE_LINK_SCOPE_KEY)
        files = current_file_link.set(link if callable(link) else None)
        try:
            return await call_next(ctx)
        finally:
            current_file_link.reset(files)
