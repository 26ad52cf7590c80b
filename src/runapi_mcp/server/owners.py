"""Whose request this is: the owner the HTTP layer found in the caller's token, for every handler.

The transport authenticates the HTTP request and leaves the owner in its ASGI scope under
:data:`OWNER_SCOPE_KEY`; this middleware puts it in ``current_owner`` for the handler's duration, so
the manager, the history and the resources all see the same caller. A request with no HTTP behind it
(stdio, in-process) or without the key is the local user's.
"""

from __future__ import annotations

from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext

from runapi_mcp.tasks import LOCAL_OWNER, current_owner

OWNER_SCOPE_KEY = "runapi_mcp.owner"


def request_owner(ctx: ServerRequestContext[Any, Any]) -> str:
    scope = getattr(ctx.request, "scope", None)
    owner = scope.get(OWNER_SCOPE_KEY) if isinstance(scope, dict) else None
    return owner if isinstance(owner, str) else LOCAL_OWNER


async def owner_scope(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Middleware: run the request as its owner."""
    token = current_owner.set(request_owner(ctx))
    try:
        return await call_next(ctx)
    finally:
        current_owner.reset(token)
