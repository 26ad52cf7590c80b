"""Whose work is running: the owner every read and write of tasks is scoped to.

The owner is set where work starts, never assumed: an MCP request (``server.owners``: over stdio the
local user, over HTTP the owner the HTTP layer verified), an HTTP route of ours (``http.app``), and each
background job of a task (polling, downloading, a restart's resumption: the task's own owner,
``TaskManager``). It is held per context (not passed down every call) so that every path to a task,
image references resolved deep in the resolver included, sees the same caller.

There is no default. Reading it where no scope set it raises :class:`MissingOwnerError` instead of
reading as the local user: a path that forgot to say for whom it works fails loudly, where a default
would quietly show it the local user's tasks (with per-user tokens, someone else's).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

LOCAL_OWNER = ""  # the owner of every task on a single-user server (stdio, no auth, one shared token)


class MissingOwnerError(RuntimeError):
    """``current_owner`` was read outside any owner scope: a bug of ours (a path that starts work without
    setting whose it is), never a reason to fall back to the local user."""

    def __init__(self) -> None:
        super().__init__(
            "no owner is set for this work: it started outside an owner scope (an MCP request, an HTTP route, "
            "or a task's own background job set one; this path set none), so whose tasks it may see is unknown"
        )


class OwnerVar:
    """A context variable holding an owner id, with no default: :meth:`get` outside a scope raises."""

    def __init__(self, name: str) -> None:
        self._var: ContextVar[str] = ContextVar(name)

    def get(self) -> str:
        """The owner in scope; :class:`MissingOwnerError` when none is."""
        try:
            return self._var.get()
        except LookupError:
            raise MissingOwnerError from None

    def is_set(self) -> bool:
        """Whether an owner is in scope (for checks and tests; work reads :meth:`get`)."""
        return self._var.get(None) is not None

    def set(self, owner: str) -> Token[str]:
        """Run as ``owner`` from here on in this context; undo with :meth:`reset`."""
        if not isinstance(owner, str):  # None must not pass for "nobody" and end up as the owner of a task
            raise TypeError(f"an owner is a str, not {type(owner).__name__}")
        return self._var.set(owner)

    def reset(self, token: Token[str]) -> None:
        self._var.reset(token)

    @contextmanager
    def scope(self, owner: str) -> Iterator[str]:
        """Run the block as ``owner`` (what was in scope before is restored after)."""
        token = self.set(owner)
        try:
            yield owner
        finally:
            self.reset(token)


# Whose request or job is running. The manager stamps it on the tasks it creates and answers "not found"
# for another owner's task; listings, image look-ups and spend caps read it too.
current_owner = OwnerVar("runapi_mcp_current_owner")
