"""Whose request this is: the owner the HTTP layer found in the caller's token, for every handler.

The transport authenticates the HTTP request and leaves the owner in its ASGI scope under
:data:`OWNER_SCOPE_KEY`; this middleware puts it in ``current_owner`` for the handler's duration, so
the manager, the history and the resources all see the same caller. A request with no HTTP behind it
(stdio, in-process) or without the key is the local user's.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext

from runapi_mcp.tasks import LOCAL_OWNER, current_owner

OWNER_SCOPE_KEY = "runapi_mcp.owner"
FILES_URL_SCOPE_KEY = "runapi_mcp.files_url"  # where this request's client fetches full images (HTTP)

# Over HTTP, the authenticated URL prefix of full-size images (results link each picture there);
# None over stdio, where the file path is the link.
current_files_url: ContextVar[str | None] = ContextVar("runapi_mcp_files_url", default=None)


def _scope_value(ctx: ServerRequestContext[Any, Any], key: str) -> str | None:
    scope = getattr(ctx.request, "scope", None)
    value = scope.get(key) if isinstance(scope, dict) else None
    return value if isinstance(value, str) else None


def request_owner(ctx: ServerRequestContext[Any, Any]) -> str:
    return _scope_value(ctx, OWNER_SCOPE_KEY) or LOCAL_OWNER


async def owner_scope(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Middleware: run the request as its owner (and with its files URL)."""
    owner = current_owner.set(request_owner(ctx))
    files = current_files_url.set(_scope_value(ctx, FILES_URL_SCOPE_KEY))
    try:
        return await call_next(ctx)
    finally:
        current_files_url.reset(files)
        current_owner.reset(owner)
