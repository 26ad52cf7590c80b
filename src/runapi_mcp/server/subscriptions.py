"""Live updates for clients of both protocol eras, from one listener on the task manager.

2026-era clients open ``subscriptions/listen`` streams; the SDK serves them from its subscription bus,
so a change is published there once. 2025-era clients (the handshake era: Claude Desktop, Cursor,
Hermes today) use ``resources/subscribe`` and plain notifications, which the SDK does not serve:
this module does, keeping per client connection the URIs it subscribed to.

A connection is held weakly and also dropped when it closes (its exit stack), so a client that
goes away leaves nothing behind. Sending is best effort with a deadline per connection, side by
side: a client that is gone or stuck costs at most that deadline and never reaches the manager (whose
poll loop awaits this listener) or the other clients.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    SubscriptionBus,
)
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INVALID_PARAMS,
    EmptyResult,
    ResourceListChangedNotification,
    ResourceUpdatedNotification,
    ResourceUpdatedNotificationParams,
    ServerNotification,
    SubscribeRequestParams,
    UnsubscribeRequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from runapi_mcp.server.history import TASKS_INDEX_URI, task_uri
from runapi_mcp.server.sdk import connection_of, default_notification_options
from runapi_mcp.tasks import LOCAL_OWNER, TaskRecord, current_owner

log = logging.getLogger("runapi_mcp.server")

SEND_DEADLINE_S = 2.0  # per connection and change: a live client takes a notification in microseconds
MAX_SUBSCRIPTIONS_PER_CLIENT = 1000
# Tasks whose addition was announced: enough to tell a new task from a changed one for a long session;
# one forgotten and seen again costs a client one spurious list_changed (a refetch), nothing more.
_REMEMBERED_TASKS = 10_000

ResourceExists = Callable[[str], Awaitable[bool]]


@dataclass(eq=False)
class _Client:
    """What is kept about one 2025-era client connection (the connection itself only weakly)."""

    uris: set[str] = field(default_factory=set)
    owner: str = LOCAL_OWNER  # whose connection: only that user's tasks are announced to it


Note = tuple[str, dict[str, Any] | None]
"""A notification as sent: its method and its params (JSON)."""


async def send_best_effort(connection: Connection, notes: Sequence[Note], what: str) -> None:
    """Send ``notes`` in order within :data:`SEND_DEADLINE_S`; a client that is gone or stuck loses the
    rest (logged, naming ``what``), and the caller (the manager's poll loop awaits its listeners) never
    waits longer than the deadline."""
    deadline = SEND_DEADLINE_S  # read at call time: tests shorten it
    with anyio.move_on_after(deadline) as scope:
        for method, params in notes:
            try:
                await connection.notify(method, params)
            except Exception:  # the client went away mid-send: its loss only
                log.debug("could not send %s to a client", method, exc_info=True)
                return
    if scope.cancelled_caught:
        log.warning("a client did not take a %s within %.0f s; skipped", what, deadline)


def _wire(note: ServerNotification) -> Note:
    data = note.model_dump(by_alias=True, mode="json", exclude_none=True)
    return data["method"], data.get("params")


class OwnerScopedBus(InMemorySubscriptionBus):
    """The SDK's in-process bus, with each 2026-era listen stream hearing only its own user's tasks.

    A stream is subscribed while its request runs as its owner; an event is published as the owner of
    the task it is about (``LiveUpdates`` sets it). Per-user tokens over HTTP must not let one user
    learn even that another's task changed.
    """

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        owner = current_owner.get()

        def scoped(event: ServerEvent) -> None:
            if current_owner.get() == owner:
                listener(event)

        return super().subscribe(scoped)


class LiveUpdates:
    """The manager's listener for both eras, and the 2025-era subscribe/unsubscribe handlers."""

    def __init__(self, bus: SubscriptionBus, exists: ResourceExists) -> None:
        self.bus = bus
        self.exists = exists
        self._clients: weakref.WeakKeyDictionary[Connection, _Client] = weakref.WeakKeyDictionary()
        self._announced: OrderedDict[str, frozenset[str]] = OrderedDict()  # task id -> image ids announced

    # -- wiring ----------------------------------------------------------------------------
    def install(self, server: Server[Any]) -> None:
        """Serve resources/subscribe and resources/unsubscribe and advertise them and listChanged.

        The SDK derives ``resources.subscribe`` from the registered handler; ``listChanged`` it takes
        from the NotificationOptions its transports never pass, so they are defaulted here."""
        server.add_request_handler("resources/subscribe", SubscribeRequestParams, self.subscribe)
        server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, self.unsubscribe)
        default_notification_options(server, NotificationOptions(resources_changed=True))

    async def track(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Middleware: know every 2025-era client from its first message on (list_changed goes to all)."""
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            self._client(ctx)
        return await call_next(ctx)

    @property
    def client_count(self) -> int:
        """2025-era client connections currently known (for tests and diagnostics)."""
        return len(self._clients)

    def _client(self, ctx: ServerRequestContext[Any, Any]) -> _Client | None:
        connection = connection_of(ctx)
        if connection is None:
            return None
        client = self._clients.get(connection)
        if client is None:
            client = self._clients[connection] = _Client(owner=current_owner.get())
            ref = weakref.ref(connection)
            connection.exit_stack.callback(self._forget, ref)
        return client

    def _forget(self, ref: weakref.ref[Connection]) -> None:
        connection = ref()
        if connection is not None:
            self._clients.pop(connection, None)

    # -- 2025-era requests -----------------------------------------------------------------
    async def subscribe(self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        uri = str(params.uri)
        if not await self.exists(uri):
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"'uri' {uri[:200]!r} is not a resource of this server "
                "(runapi://tasks, runapi://tasks/{task_id}, runapi://images/{image_id} or runapi://models)",
                data={"uri": uri[:1000]},
            )
        client = self._client(ctx)
        if client is None:
            raise MCPError(code=INVALID_PARAMS, message="this connection cannot receive resource updates")
        if uri not in client.uris and len(client.uris) >= MAX_SUBSCRIPTIONS_PER_CLIENT:
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"at most {MAX_SUBSCRIPTIONS_PER_CLIENT} subscriptions per client; unsubscribe some first",
            )
        client.uris.add(uri)
        return EmptyResult()

    async def unsubscribe(self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        client = self._client(ctx)
        if client is not None:
            client.uris.discard(str(params.uri))
        return EmptyResult()

    # -- the manager's listener ------------------------------------------------------------
    async def task_changed(self, record: TaskRecord) -> None:
        """Tell both eras: the task's resource and the index changed; the list too when something
        was added (a new task, a completed task's images)."""
        # A task resource answers to RunAPI's id too: a client may have subscribed by either.
        uris = (*(task_uri(task_id) for task_id in record.ids), TASKS_INDEX_URI)
        added = self._added(record)
        events: list[ServerEvent] = [ResourceUpdated(uri=uri) for uri in uris]
        if added:
            events.append(ResourcesListChanged())
        publishing_as = current_owner.set(record.owner)  # whose listeners hear it (OwnerScopedBus)
        try:
            for event in events:
                try:
                    await self.bus.publish(event)
                except Exception:  # a custom (networked) bus may fail; the 2025-era clients still hear of it
                    log.exception("publishing %s on the subscription bus failed", event)
        finally:
            current_owner.reset(publishing_as)
        await self._notify_clients(uris, added, record.owner)

    def _added(self, record: TaskRecord) -> bool:
        saved = frozenset(image.id for image in record.images if image.path)
        known = self._announced.pop(record.task_id, None)
        self._announced[record.task_id] = saved | (known or frozenset())
        while len(self._announced) > _REMEMBERED_TASKS:
            self._announced.popitem(last=False)
        return known is None or not saved <= known

    async def _notify_clients(self, uris: tuple[str, ...], list_changed: bool, owner: str) -> None:
        # Resource updates before list_changed on each connection: a client that sees the latter has
        # seen everything this change sent it. Each notification is dumped once, whoever it goes to.
        updated = {
            uri: _wire(ResourceUpdatedNotification(params=ResourceUpdatedNotificationParams(uri=uri))) for uri in uris
        }
        listed = _wire(ResourceListChangedNotification()) if list_changed else None
        plans: list[tuple[Connection, list[Note]]] = []
        for connection, client in list(self._clients.items()):
            if not connection.initialized.is_set():
                continue  # the spec: nothing but pings and logs before the client said it is ready
            if client.owner != owner:
                continue  # another user's task: not even that something changed
            notes = [updated[uri] for uri in uris if uri in client.uris]
            if listed is not None:
                notes.append(listed)
            if notes:
                plans.append((connection, notes))
        if not plans:
            return
        async with anyio.create_task_group() as tg:
            for connection, notes in plans:
                tg.start_soon(send_best_effort, connection, notes, "resource notification")
