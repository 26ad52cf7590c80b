"""MCP Tasks (spec 2025-11-25): a task-augmented ``tools/call`` of an image tool answers at once with a
``CreateTaskResult``; ``tasks/get``, ``tasks/result``, ``tasks/list`` and ``tasks/cancel`` follow it,
and ``notifications/tasks/status`` tells the connection that created it when it moves on.

There is no second task store: the MCP task id IS this server's task id (``TaskRecord.task_id``), so
``tasks/get`` and ``get_task`` always agree, and a task outlives a restart through the same store.
Owners are the manager's: every method sees only the caller's tasks (another owner's id is "not
found", like one that never existed).

Three layers, so the 2026 form (extension ``io.modelcontextprotocol/tasks``: ``tasks/get`` returns
the result inline once terminal, ``tasks/cancel``, ``tasks/update``; no ``tasks/result`` or
``tasks/list``) can be added beside this one without touching it:

- :class:`TaskCore` knows no wire: a ``TaskRecord`` as an MCP task (:class:`TaskView`: status,
  message, timestamps, ttl, poll interval), and get, wait, result, list and cancel over the manager.
- :class:`TaskMethods` registers each ``tasks/*`` method once with the low-level server and hands a
  request to the binding registered for the connection's protocol version; any other version gets
  -32601, as if the method did not exist (what a plain server answers today).
- :class:`Tasks2025` is the 2025-11-25 wire binding: its methods, a middleware that advertises
  ``capabilities.tasks`` and ``execution.taskSupport`` and answers task-augmented calls, and the
  status notifications. A 2026 binding would register its own handlers for 2026-07-28 in the same
  :class:`TaskMethods` and be an SDK ``Extension`` for its advertisement only.

Why not the SDK's ``Extension`` for the 2025 form: an extension is advertised under
``capabilities.extensions`` to every 2026-07-28 client (the wrong tasks form for them), and its
``intercept_tool_call`` runs inside the SDK's result sieve, which validates a 2025 ``tools/call``
result as ``CallToolResult`` and turns a ``CreateTaskResult`` into -32603. A server middleware runs
outside that sieve and sees the negotiated version, so it can answer each version exactly as before.

A bad call (unknown field, disallowed value, unreadable image, spend cap) made as a task gets the
same ``isError`` result a plain call gets, at once, and no task: the 2025-11-25 tools spec makes
input validation errors tool execution errors (``isError``, for the model to correct itself), not
protocol errors, and a ``CreateTaskResult`` is owed only for a request the server accepts. A task
created for it would have to start ``working`` for a request that never ran, and VS Code reports a
``failed`` task by its status message alone; VS Code hands a plain result for a task-augmented
call to the model as is.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    CallToolResult,
    CancelTaskRequestParams,
    CancelTaskResult,
    CreateTaskResult,
    GetTaskPayloadRequestParams,
    GetTaskRequestParams,
    GetTaskResult,
    ListTasksResult,
    PaginatedRequestParams,
    ProgressToken,
    Task,
    TaskMetadata,
)
from mcp_types.methods import serialize_server_result
from pydantic import BaseModel, ConfigDict, ValidationError

from runapi_mcp.server.compat import mark_tools, with_capability
from runapi_mcp.server.owners import owned_page
from runapi_mcp.server.results import CANCELLED_NOTE
from runapi_mcp.server.sdk import connection_of
from runapi_mcp.server.subscriptions import Note, send_best_effort
from runapi_mcp.server.tools import ImageTools
from runapi_mcp.tasks import InvalidCursorError, TaskManager, TaskRecord, UnknownTaskError, ended
from runapi_mcp.tasks.manager import TaskEndedError
from runapi_mcp.wording import count

log = logging.getLogger("runapi_mcp.server")

TASKS_2025 = "2025-11-25"
# The tools that may run as a task (execution.taskSupport "optional"); every other tool has no
# ``execution`` field, which the spec reads as "forbidden".
TASK_TOOLS = frozenset({"generate_image", "edit_image", "upscale_image"})
RELATED_TASK_META_KEY = "io.modelcontextprotocol/related-task"
CANCEL_NOTE = f"Cancelled by the client (tasks/cancel). {CANCELLED_NOTE}"

# ttl: how long the client may count on the task, from its creation. Every task stays in the store for
# good, so any value is kept; a client's request is honoured within bounds (VS Code, which asks for
# none, gives up waiting when it runs out). An hour is far beyond any image task.
DEFAULT_TTL_MS = 60 * 60 * 1000
MIN_TTL_MS = 60 * 1000
MAX_TTL_MS = 7 * 24 * 60 * 60 * 1000
# pollInterval: a tasks/get is answered from the task's record (RunAPI is polled by the manager on its
# own schedule, whoever asks), so the hint follows the expected finish: coarse early, finer near it.
MIN_POLL_MS = 500
MAX_POLL_MS = 5000
TASK_PAGE_SIZE = 50
_REMEMBERED = 10_000  # requested ttls and watched tasks kept per process (oldest forgotten first)
_RESULT_WAIT_S = 30.0  # tasks/result blocks in slices of this (a wait that ended early is not a spin)

McpTaskStatus = Literal["working", "input_required", "completed", "failed", "cancelled"]
Finish = Callable[[CallToolResult], CallToolResult]
Handler = Callable[[ServerRequestContext[Any, Any], Any], Awaitable[HandlerResult]]



def mcp_status(record: TaskRecord) -> McpTaskStatus:
    """The task's state as an MCP task state: an ended one's is its own (MCP names the three alike), and
    everything before an end is "working" (MCP has no pending/queued)."""
    status = record.status
    return status if ended(status) else "working"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clamp_ttl(requested: int | None) -> int:
    """The ttl granted for a requested one (None: the client asked for none)."""
    if requested is None:
        return DEFAULT_TTL_MS
    return min(MAX_TTL_MS, max(MIN_TTL_MS, requested))


@dataclass(frozen=True)
class TaskView:
    """One task as MCP sees it, in no protocol version's shape."""

    task_id: str
    status: McpTaskStatus
    message: str
    created_at: str
    updated_at: str
    ttl_ms: int
    poll_interval_ms: int | None  # None once the task has ended: there is nothing to poll for

    def task(self) -> Task:
        return Task(
            task_id=self.task_id,
            status=self.status,
            status_message=self.message,
            created_at=self.created_at,
            last_updated_at=self.updated_at,
            ttl=self.ttl_ms,
            poll_interval=self.poll_interval_ms,
        )


class TaskCore:
    """MCP tasks over the task manager, for any wire binding: no session, no protocol version here."""

    def __init__(self, manager: TaskManager, tools: ImageTools, *, page_size: int = TASK_PAGE_SIZE) -> None:
        self.manager = manager
        self.tools = tools
        self.page_size = page_size
        self._ttls: OrderedDict[str, int] = OrderedDict()

    # -- the view ------------------------------------------------------------------------------
    def remember_ttl(self, task_id: str, ttl_ms: int) -> None:
        """The ttl granted when the task was created. Kept in memory only: a task made by a plain call,
        or before a restart, reports the default; the store keeps every task for good, so either is a
        promise kept."""
        self._ttls[task_id] = ttl_ms
        self._ttls.move_to_end(task_id)
        while len(self._ttls) > _REMEMBERED:
            self._ttls.popitem(last=False)

    def view(self, record: TaskRecord) -> TaskView:
        status = mcp_status(record)
        return TaskView(
            task_id=record.task_id,
            status=status,
            message=self.message(record),
            created_at=_iso(record.created_at),
            updated_at=_iso(record.updated_at),
            ttl_ms=self._ttls.get(record.task_id, DEFAULT_TTL_MS),
            poll_interval_ms=None if record.terminal else self.poll_interval_ms(record),
        )

    def message(self, record: TaskRecord) -> str:
        """What a person reads about the task's state (VS Code shows a failed task by this alone)."""
        elapsed = max(0.0, (record.completed_at or self.manager.clock.time()) - record.created_at)
        if record.status == "completed":
            text = f"Completed in {elapsed:.0f}s: {count(len(record.images), 'image')}; tasks/result returns them"
            return f"{text}. Note: {record.error}" if record.error else text
        if record.status == "failed":
            return record.error or "RunAPI reported the task failed"
        if record.status == "cancelled":
            return record.error or CANCEL_NOTE
        if record.status == "submitting":
            text = (
                "Sent to RunAPI, which has not confirmed it yet (it is sent again with the same key: never paid twice)"
            )
        else:
            share = self.manager.estimated_progress(record) * 100
            text = f"{record.status.capitalize()} at RunAPI, about {share:.0f}% done, {elapsed:.0f}s elapsed"
        return f"{text}. Last polling problem: {record.error}" if record.error else text

    def poll_interval_ms(self, record: TaskRecord) -> int:
        """Half the time the task is still expected to take (a quarter of its usual length once overdue),
        within bounds: the client looks again about when something may have happened."""
        mean, _ = self.manager.durations.estimate(record.kind_key, record.model, record.resolution)
        remaining = mean - max(0.0, self.manager.clock.time() - record.created_at)
        seconds = max(remaining, mean * 0.25) / 2
        return int(min(MAX_POLL_MS, max(MIN_POLL_MS, seconds * 1000)))

    # -- the operations (owner-checked by the manager; raise UnknownTaskError) ----------------------
    async def get(self, task_id: str) -> TaskRecord:
        return await self.manager.get(task_id)

    async def wait_until_ended(self, task_id: str) -> TaskRecord:
        """Block until the task ends (the spec's tasks/result), however long that is.

        A wait that gives up early (the manager stopping) is retried after a pause, not in a spin;
        cancelling the caller ends the wait, never the task."""
        while True:
            started = anyio.current_time()
            record = await self.manager.wait(task_id, _RESULT_WAIT_S)
            if record.terminal:
                return record
            if anyio.current_time() - started < 1.0:
                await anyio.sleep(1.0)

    async def result(self, record: TaskRecord) -> CallToolResult:
        """What the tool call would have returned for the task as it stands."""
        return await self.tools.result(record)

    async def page(self, cursor: str | None) -> tuple[list[TaskRecord], str | None]:
        """One page of the caller's tasks, newest first; raises InvalidCursorError for a foreign cursor."""
        page = await owned_page(self.manager.store, limit=self.page_size, cursor=cursor)
        return page.records, page.next_cursor

    async def cancel(self, task_id: str) -> TaskRecord:
        """Stop tracking a running task; raises TaskEndedError for one that has ended."""
        return await self.manager.cancel(task_id, CANCEL_NOTE)


class _AnyParams(BaseModel):
    """What the low-level server validates before :class:`TaskMethods` picks the binding's own model."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class _Binding:
    params_type: type[BaseModel]
    handler: Handler


class TaskMethods:
    """Each ``tasks/*`` method registered once, served per protocol version by the binding for it."""

    def __init__(self, server: Server[Any]) -> None:
        self._server = server
        self._bindings: dict[str, dict[str, _Binding]] = {}

    def add(self, method: str, version: str, params_type: type[BaseModel], handler: Handler) -> None:
        bindings = self._bindings.get(method)
        if bindings is None:
            bindings = self._bindings[method] = {}
            self._server.add_request_handler(method, _AnyParams, self._dispatcher(method, bindings))
        if version in bindings:
            raise ValueError(f"{method} is already served for protocol version {version}")
        bindings[version] = _Binding(params_type, handler)

    @staticmethod
    def _dispatcher(method: str, bindings: Mapping[str, _Binding]) -> Handler:
        async def dispatch(ctx: ServerRequestContext[Any, Any], _params: Any) -> HandlerResult:
            binding = bindings.get(ctx.protocol_version)
            if binding is None:  # what a server without tasks answers: the method is not there
                raise MCPError(code=METHOD_NOT_FOUND, message="Method not found", data=method)
            try:
                typed = binding.params_type.model_validate(dict(ctx.params or {}), by_name=False)
            except ValidationError as exc:
                raise MCPError(code=INVALID_PARAMS, message=f"{method}: {_describe(exc)}") from None
            return await binding.handler(ctx, typed)

        return dispatch


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "params"
    return f"'{where}' {first['msg'].lower()}"


def _not_found(task_id: str) -> MCPError:
    return MCPError(
        code=INVALID_PARAMS,
        message=f"Failed to retrieve task: 'taskId' {task_id[:200]!r} is not a task this server knows",
        data={"taskId": task_id[:1000]},
    )


@dataclass(eq=False)
class _Watch:
    """The connection that created a task (held weakly), and what it has been told so far."""

    connection: weakref.ref[Connection]
    status: str  # our state last announced
    progress_token: ProgressToken | None
    progress: float = 0.0  # the last progress value sent (the spec wants them strictly increasing)


class Tasks2025:
    """The 2025-11-25 wire form of MCP tasks over a :class:`TaskCore`."""

    version = TASKS_2025

    def __init__(self, core: TaskCore, finish: Finish, has_tool: Callable[[str], bool]) -> None:
        self.core = core
        self.finish = finish  # the server's last touch on a tool result (redaction), for tasks/result too
        self.has_tool = has_tool
        self._watches: OrderedDict[str, _Watch] = OrderedDict()

    # -- wiring ---------------------------------------------------------------------------------
    def install(self, methods: TaskMethods) -> None:
        methods.add("tasks/get", self.version, GetTaskRequestParams, self.get_task)
        methods.add("tasks/result", self.version, GetTaskPayloadRequestParams, self.task_result)
        methods.add("tasks/list", self.version, PaginatedRequestParams, self.list_tasks)
        methods.add("tasks/cancel", self.version, CancelTaskRequestParams, self.cancel_task)
        self.core.manager.add_listener(self.task_changed)

    async def middleware(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Advertise tasks to 2025-11-25 clients and answer their task-augmented calls; every other
        version and request passes through untouched."""
        if ctx.method == "tools/call" and ctx.protocol_version == self.version:
            params = ctx.params
            if isinstance(params, Mapping) and params.get("task") is not None:
                return await self._create(ctx, params, call_next)
        result = await call_next(ctx)
        if not isinstance(result, dict):
            return result
        if ctx.method == "initialize" and result.get("protocolVersion") == self.version:
            return advertise_capabilities(result)
        if ctx.method == "tools/list" and ctx.protocol_version == self.version:
            return advertise_tools(result)
        return result

    # -- tools/call as a task ------------------------------------------------------------------
    async def _create(
        self, ctx: ServerRequestContext[Any, Any], params: Mapping[str, Any], call_next: CallNext
    ) -> HandlerResult:
        try:
            metadata = TaskMetadata.model_validate(params["task"], by_name=False)
        except ValidationError as exc:
            raise MCPError(code=INVALID_PARAMS, message=f"tools/call 'task': {_describe(exc)}") from None
        name = params.get("name")
        arguments = params.get("arguments")
        if name not in TASK_TOOLS or not (arguments is None or isinstance(arguments, Mapping)):
            # A tool this server has but runs only in the call itself: the spec's answer is -32601. An
            # unknown tool or malformed arguments go the plain way, to the error they get there.
            if isinstance(name, str) and name not in TASK_TOOLS and self.has_tool(name):
                raise MCPError(
                    code=METHOD_NOT_FOUND,
                    message=f"{name[:100]} does not run as a task (its execution.taskSupport is forbidden); "
                    "call it without 'task'",
                )
            return await call_next(ctx)
        # The tool validates, quotes, uploads and creates as in a plain call, then returns at once.
        rewritten = {**params, "arguments": {**(arguments or {}), "wait": False}}
        result = await call_next(replace(ctx, params=rewritten))
        if not isinstance(result, dict) or result.get("isError"):
            return result  # refused before any task was accepted: the plain call's own error result
        structured = result.get("structuredContent")
        task_id = structured.get("task_id") if isinstance(structured, Mapping) else None
        if not isinstance(task_id, str):
            log.error("task-augmented %s returned no task_id", name)
            raise MCPError(code=INTERNAL_ERROR, message=f"{name} did not return its task id")
        record = await self.core.get(task_id)
        self.core.remember_ttl(task_id, clamp_ttl(metadata.ttl))
        self._watch(ctx, record)
        # The spec starts every task "working"; one that has ended already (a model that answers at once)
        # says so at the first tasks/get, which is due right away.
        view = self.core.view(record)
        if record.terminal:
            view = replace(view, message="Accepted; tasks/get has its state", poll_interval_ms=MIN_POLL_MS)
        return CreateTaskResult(task=replace(view, status="working").task())

    # -- the methods ----------------------------------------------------------------------------
    async def get_task(self, ctx: ServerRequestContext[Any, Any], params: GetTaskRequestParams) -> GetTaskResult:
        record = await self._record(params.task_id)
        return GetTaskResult.model_validate(self.core.view(record).task().model_dump())

    async def task_result(
        self, ctx: ServerRequestContext[Any, Any], params: GetTaskPayloadRequestParams
    ) -> dict[str, Any]:
        """Blocks until the task has ended, then exactly what the tool call would have returned."""
        await self._record(params.task_id)  # an unknown id fails now, not after a wait
        record = await self.core.wait_until_ended(params.task_id)
        result = self.finish(await self.core.result(record))
        wire = serialize_server_result(
            "tools/call", self.version, result.model_dump(by_alias=True, mode="json", exclude_none=True)
        )
        meta = dict(wire.get("_meta") or {})
        meta[RELATED_TASK_META_KEY] = {"taskId": record.task_id}
        return {**wire, "_meta": meta}

    async def list_tasks(self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams) -> ListTasksResult:
        try:
            records, next_cursor = await self.core.page(params.cursor)
        except InvalidCursorError as exc:
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from None
        return ListTasksResult(tasks=[self.core.view(r).task() for r in records], next_cursor=next_cursor)

    async def cancel_task(
        self, ctx: ServerRequestContext[Any, Any], params: CancelTaskRequestParams
    ) -> CancelTaskResult:
        try:
            record = await self.core.cancel(params.task_id)
        except UnknownTaskError:
            raise _not_found(params.task_id) from None
        except TaskEndedError as exc:
            raise MCPError(code=INVALID_PARAMS, message=f"Cannot cancel: {exc}", data={"status": exc.status}) from None
        return CancelTaskResult.model_validate(self.core.view(record).task().model_dump())

    async def _record(self, task_id: str) -> TaskRecord:
        try:
            return await self.core.get(task_id)
        except UnknownTaskError:
            raise _not_found(task_id) from None

    # -- notifications/tasks/status -------------------------------------------------------------
    def _watch(self, ctx: ServerRequestContext[Any, Any], record: TaskRecord) -> None:
        connection = connection_of(ctx)
        if connection is None or record.terminal:
            return  # nothing to tell, or nobody to tell it (notifications are optional: clients poll)
        token = ctx.meta.get("progress_token") if ctx.meta else None
        self._watches[record.task_id] = _Watch(weakref.ref(connection), record.status, token)
        while len(self._watches) > _REMEMBERED:
            self._watches.popitem(last=False)

    async def task_changed(self, record: TaskRecord) -> None:
        """The manager's listener: the creating connection hears of every change of state (and, if it
        asked for progress on the call, of progress), best effort within a deadline."""
        watch = self._watches.get(record.task_id)
        if watch is None:
            return
        connection = watch.connection()
        if connection is None or record.terminal:
            self._watches.pop(record.task_id, None)
        if connection is None:
            return
        notes: list[Note] = []
        if watch.progress_token is not None:
            value = 100.0 if record.terminal else min(99.9, self.core.manager.estimated_progress(record) * 100)
            if value > watch.progress:
                watch.progress = value
                notes.append(("notifications/progress", {
                    "progressToken": watch.progress_token, "progress": value, "total": 100.0,
                    "message": self.core.message(record),
                }))  # fmt: skip
        if record.status != watch.status:
            watch.status = record.status
            task = self.core.view(record).task()
            notes.append(("notifications/tasks/status", task.model_dump(by_alias=True, mode="json", exclude_none=True)))
        if notes:
            # The manager's poll loop awaits its listeners: a stuck client costs it one deadline at most.
            await send_best_effort(connection, notes, "task notification")


def advertise_capabilities(result: dict[str, Any]) -> dict[str, Any]:
    """``capabilities.tasks`` on an initialize result: list, cancel and task-augmented tools/call."""
    return with_capability(result, "tasks", {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}})


def advertise_tools(result: dict[str, Any]) -> dict[str, Any]:
    """``execution.taskSupport: optional`` on the image tools of a tools/list result."""
    return mark_tools(result, TASK_TOOLS, "execution", {"taskSupport": "optional"})


class McpTasks:
    """The wiring for the server: one core, one method table, the 2025-11-25 binding (a 2026 binding
    would join them here, registering its handlers in the same table)."""

    def __init__(
        self, manager: TaskManager, tools: ImageTools, *, finish: Finish, has_tool: Callable[[str], bool]
    ) -> None:
        self.core = TaskCore(manager, tools)
        self.v2025 = Tasks2025(self.core, finish, has_tool)

    async def middleware(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        return await self.v2025.middleware(ctx, call_next)

    def install(self, server: Server[Any]) -> None:
        """Serve the tasks/* methods and send status notifications (call once, after the server is built)."""
        self.v2025.install(TaskMethods(server))
