"""Whose request this is: the owner the HTTP layer found in the caller's token, for every handler.

The transport authenticates the HTTP request and leaves the owner in its ASGI scope under
:data:`OWNER_SCOPE_KEY`; this middleware puts it in ``current_owner`` for the handler's duration, so
the manager, the history and the resources all see the same caller. A request with no HTTP behind it
(stdio, in-process) or without the key is the local user's.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext

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


def _scope_value(ctx: ServerRequestContext[Any, Any], key: str) -> str | None:
    scope = getattr(ctx.request, "scope", None)
    value = scope.get(key) if isinstance(scope, dict) else None
    return value if isinstance(value, str) else None


def request_owner(ctx: ServerRequestContext[Any, Any]) -> str:
    return _scope_value(ctx, OWNER_SCOPE_KEY) or LOCAL_OWNER


async def owner_scope(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Middleware: run the request as its owner (and with its way of linking full images)."""
    owner = current_owner.set(request_owner(ctx))
    scope = getattr(ctx.request, "scope", None)
    link = scope.get(FILE_LINK_SCOPE_KEY) if isinstance(scope, dict) else None
    files = current_file_link.set(link if callable(link) else None)
    try:
        return await call_next(ctx)
    finally:
        current_file_link.reset(files)
        current_owner.reset(owner)
