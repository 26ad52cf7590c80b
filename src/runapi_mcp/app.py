"""The composition root: settings -> RunAPI client -> task manager -> MCP server, for any transport."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import anyio

from runapi_mcp import __version__
from runapi_mcp.catalog import get_catalog
from runapi_mcp.client import RunAPIClient
from runapi_mcp.clock import SYSTEM_CLOCK, Clock
from runapi_mcp.config import Settings
from runapi_mcp.server import RunAPIMCPServer, ServerDeps, build_server
from runapi_mcp.stdio import StdioTransport, end_process
from runapi_mcp.tasks import (
    Availability,
    DurationMemory,
    ImageResolver,
    ImageStore,
    PollPolicy,
    TaskManager,
    TaskStore,
)
from runapi_mcp.tasks.backends import open_task_store
from runapi_mcp.tasks.claims import LeaseClaims, new_instance_id
from runapi_mcp.wording import count


@dataclass
class App:
    settings: Settings
    client: RunAPIClient
    manager: TaskManager
    server: RunAPIMCPServer
    availability: Availability
    instance_id: str = ""  # this process's id as a lease holder, with a shared store ("" otherwise)


class _RedactingFilter(logging.Filter):
    """Cuts the API key out of every log record, whatever code wrote it."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._redact = settings.redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        redacted = self._redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        return True


def configure_logging(settings: Settings) -> None:
    """Logs go to stderr only: on stdio, stdout is the protocol channel."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactingFilter(settings))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for noisy in ("httpx", "httpcore", "mcp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[TaskStore]:
    """The task store the server keeps its tasks in: PostgreSQL at ``RUNAPI_MCP_DATABASE_URL`` when set, else
    ``tasks.sqlite3`` in ``RUNAPI_MCP_HOME``."""
    store = await open_task_store(database_url=settings.database, sqlite_file=settings.store_file)
    try:
        yield store
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()


@asynccontextmanager
async def open_app(
    settings: Settings,
    *,
    policy: PollPolicy | None = None,
    store: TaskStore | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> AsyncIterator[App]:
    """Everything wired and running (poll loops live as long as the block); ``store`` replaces the
    configured one (:func:`open_store`; e.g. a ``MemoryTaskStore``); ``clock`` is the one every part reads
    the time from and sleeps on (a test's, moved by hand)."""
    async with AsyncExitStack() as stack:
        if store is None:
            store = await stack.enter_async_context(open_store(settings))
        yield await stack.enter_async_context(_wired(settings, policy, store, clock))


@asynccontextmanager
async def _wired(
    settings: Settings, policy: PollPolicy | None, store: TaskStore, clock: Clock
) -> AsyncIterator[App]:
    user_agent = f"runapi-mcp/{__version__}"
    instance_id = ""
    claims: LeaseClaims | None = None
    if store.shared:
        # Several instances share the store: each polls the tasks it holds the lease of. RunAPI sees which
        # instance sent what (an operator tracing one task's requests; the tests, that none is polled twice).
        instance_id = new_instance_id()
        claims = LeaseClaims(store.leases, instance_id, ttl_s=settings.lease_ttl_s)
        user_agent += f" (instance {instance_id})"
        logging.getLogger("runapi_mcp").info(
            "instance %s: polls the tasks it holds a lease on (for %.0f s, renewed) in the shared task store",
            instance_id, settings.lease_ttl_s,
        )
    client = RunAPIClient(
        settings.key(),
        settings.base_url,
        user_agent=user_agent,
        max_connections=settings.max_concurrent_requests * 2,
        redactor=settings.redactor,
        clock=clock,
    )
    images = ImageStore(settings.images_dir, max_bytes=settings.max_output_bytes)
    manager = TaskManager(
        client,
        images,
        store,
        policy=policy,
        max_concurrent_requests=settings.max_concurrent_requests,
        max_concurrent_downloads=settings.max_concurrent_downloads,
        durations_memory=(
            DurationMemory(store, settings.base_url, legacy_file=settings.legacy_durations_file)
            if settings.remembers_durations
            else None
        ),
        # http.webhook serves these (CALLBACK_PATH); a server RunAPI cannot reach is polled only.
        callback_base=settings.callback_base,
        save_dirs=settings.allowed_dirs,  # save_as copies go where local images may be read from
        clock=clock,
        claims=claims,
    )
    resolver = ImageResolver(
        client,
        images,
        allowed_dirs=settings.allowed_dirs,
        max_bytes=settings.max_input_bytes,
        find_task=manager.find,
        find_image=manager.find_image,
        clock=clock,
    )
    catalog = get_catalog()
    availability = Availability(client, catalog, max_age_s=settings.schedules_max_age_s, clock=clock)
    server = build_server(
        ServerDeps(manager=manager, resolver=resolver, catalog=catalog, wait_s=settings.wait_s,
                   has_key=client.has_key, max_spend_cents=settings.max_spend_cents,
                   user_spend_cents=settings.user_caps, confirm_above_cents=settings.confirm_above_cents,
                   availability=availability, resource_links=settings.resource_links),
        settings.redactor,
    )
    async with client, manager.running(), anyio.create_task_group() as tg:
        tg.start_soon(availability.refresh)  # read at start, without holding the start up
        yield App(
            settings=settings, client=client, manager=manager, server=server, availability=availability,
            instance_id=instance_id,
        )
        tg.cancel_scope.cancel()


# After SIGINT/SIGTERM, the longest the waiting tool calls have to answer before the process ends. They answer
# in a few ms; Claude Code sends SIGTERM 100 ms after SIGINT, and SIGKILL at about 0.5 s.
STDIO_STOP_GRACE_S = 0.08


async def serve_stdio(settings: Settings) -> None:
    """Serve one client over stdin/stdout until it closes stdin, or a signal stops the server; then end the
    process.

    Signals are taken from the start (one during the start stops the server once it is up) to the end (one
    while the server winds down after stdin closed waits for that: clients close stdin and signal at once).
    Once wound down (every answer written, the store closed) the process ends at once, without the
    interpreter's finalization: its garbage collection of the catalog and models alone takes 0.1 to 1 s, and
    Claude Code sends SIGTERM 100 ms after SIGINT."""
    transport = StdioTransport()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_app(settings) as app, anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, app, transport, signals)
            await transport.serve(app.server)
            tg.cancel_scope.cancel()
    end_process()


async def _stop_on_signal(app: App, transport: StdioTransport, signals: AsyncIterator[signal.Signals]) -> None:
    """SIGINT or SIGTERM (a client ending its session, ``docker stop``, a supervisor): every waiting call
    answers with its task id ("still running"), and once those answers are written (``STDIO_STOP_GRACE_S``
    at most) the store is closed and the process ends. A second signal cuts the wait short. The tasks resume
    on the next start.

    The process is ended here rather than by unwinding: the SDK reads stdin in a worker thread that no
    cancellation reaches, so a client that keeps stdin open would otherwise hold the process for ever.
    """
    log = logging.getLogger("runapi_mcp")
    signum = await anext(signals)
    started = anyio.current_time()
    waiting = len(transport.calls)
    log.info("%s: answering the waiting calls, then stopping", signal.Signals(signum).name)
    app.manager.stop_waiting()
    async with anyio.create_task_group() as tg:

        async def cut_short() -> None:
            again = await anext(signals)
            log.info("%s: stopping now", signal.Signals(again).name)
            tg.cancel_scope.cancel()

        tg.start_soon(cut_short)
        with anyio.move_on_after(STDIO_STOP_GRACE_S):
            await transport.wait_settled()
        tg.cancel_scope.cancel()
    answered = anyio.current_time()
    if transport.calls:
        log.warning("stopping with %s unanswered", count(len(transport.calls), "tool call"))
    with anyio.CancelScope(shield=True):
        await app.manager.store.close()
    log.info(
        "stopped: %s answered in %.0f ms, the store closed in %.0f ms",
        count(max(0, waiting - len(transport.calls)), "tool call"),
        (answered - started) * 1000,
        (anyio.current_time() - answered) * 1000,
    )
    end_process()
