"""Every HTTP request runs as its owner (ASGI middleware), or with none when nobody is verified.

The owner goes in the ASGI scope (where the MCP layer reads it: ``server.owners``) and in ``current_owner``
for this server's own routes. Without auth (loopback only) that is the local user; with auth, the
authenticated caller. A request with no verified caller runs with no owner at all: a route that reads one
then fails (``MissingOwnerError``) instead of seeing the local user's tasks. The routes that take such
requests check their own credentials: the gallery's cookie, a signed file link, a RunAPI callback's
per-task secret.
"""

from __future__ import annotations

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.types import ASGIApp, Receive, Scope, Send

from runapi_mcp.http.auth import owner_of
from runapi_mcp.server.owners import OWNER_SCOPE_KEY
from runapi_mcp.tasks import LOCAL_OWNER, current_owner


class OwnerScope:
    """Sets the owner of each HTTP request; ``local``: the server has no auth (every caller is the local
    user). Installed after the authentication middleware, which puts the verified user in the scope."""

    def __init__(self, app: ASGIApp, *, local: bool) -> None:
        self.app = app
        self.local = local

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        owner = self._owner(scope)
        if owner is None:
            await self.app(scope, receive, send)
            return
        scope[OWNER_SCOPE_KEY] = owner
        with current_owner.scope(owner):
            await self.app(scope, receive, send)

    def _owner(self, scope: Scope) -> str | None:
        if scope["type"] != "http":
            return None
        if self.local:
            return LOCAL_OWNER
        user = scope.get("user")
        return owner_of(user.access_token) if isinstance(user, AuthenticatedUser) else None
