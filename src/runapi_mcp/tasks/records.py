"""What the server remembers about a task and its pictures: plain data, ready to persist."""

from __future__ import annotations

import time
import uuid
from contextvars import ContextVar
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runapi_mcp.client import TaskStatus

# A task's state here: RunAPI's four, "submitting" before RunAPI has confirmed the create (the task is
# recorded first, so a create whose answer was lost is still known, and re-sent with its key), and
# "cancelled" once a client cancelled it (MCP tasks/cancel): RunAPI has no cancel, so this server only
# stops tracking it; the state is final, whatever RunAPI does with the task afterwards.
TaskState = Literal["submitting", "cancelled"] | TaskStatus
LOCAL_OWNER = ""  # the owner of every task on a single-user server (stdio, one shared token)
# Whose request is being served. The MCP layer sets it for each request from the caller's token; the
# manager stamps it on the tasks it creates and answers "not found" for another owner's task. Set
# per request (not passed down every call) so that every path to a task, including image references
# resolved deep in the resolver, sees the same caller.
current_owner: ContextVar[str] = ContextVar("runapi_mcp_current_owner", default=LOCAL_OWNER)
# Every state, in the order a task goes through them (the filters of list_tasks, the gallery and
# `runapi-mcp tasks --status` offer them so).
STATES: tuple[TaskState, ...] = ("submitting", "pending", "processing", "completed", "failed", "cancelled")
TERMINAL: frozenset[TaskState] = frozenset({"completed", "failed", "cancelled"})
UNFINISHED: frozenset[TaskState] = frozenset({"submitting", "pending", "processing"})


def kind_key(model: str, resolution: str | None) -> str:
    """What tasks of similar duration share, the key ``durations`` learns under: ``model@resolution``
    (``TaskRecord.kind_key`` is this of the task's model and resolution; ``durations._split_kind`` reads it
    back). Here, with the records, so that ``durations`` depends on them and not the other way round."""
    return f"{model}@{resolution or 'default'}"


def new_task_id() -> str:
    """The server's own id of a task, known before RunAPI answers (URI-safe, sortable by creation)."""
    return f"task-{int(time.time() * 1000):012x}-{uuid.uuid4().hex[:12]}"


class StatusChange(BaseModel):
    """One step of a task's life: its state from ``at`` (epoch seconds) on."""

    status: TaskState
    at: float


class ImageRecord(BaseModel):
    """One output picture in the local library."""

    id: str
    task_id: str
    index: int
    uri: str
    path: str | None = None
    url: str | None = None
    width: int | None = None
    height: int | None = None
    mime_type: str | None = None
    bytes: int | None = None
    error: str | None = None  # why it is not in the library (yet), when it is not
    created_at: float = Field(default_factory=time.time)
    saved_as: str | None = None  # where its save_as copy was written (tasks.saving)
    save_error: str | None = None  # why no save_as copy was written (it is tried once)


class TaskRecord(BaseModel):
    """One logical task as this server tracks it: recorded before the upstream create, kept in the store.

    ``task_id`` is the server's own id (stable from the first moment); ``upstream_id`` is RunAPI's, once
    RunAPI has answered the create. Both find the task.
    """

    # Every change goes through ``updated()``, so a bad value is caught where it is made.
    model_config = ConfigDict(validate_assignment=True)

    task_id: str = Field(default_factory=new_task_id)
    upstream_id: str | None = None
    idempotency_key: str
    status: TaskState = "submitting"
    model: str
    service: str
    action: str
    route: str
    prompt: str | None = None
    request: dict[str, Any] = Field(default_factory=dict)
    resolution: str | None = None
    images: list[ImageRecord] = Field(default_factory=list)
    remote_urls: list[str] = Field(default_factory=list)
    error: str | None = None
    progress: float | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    completed_at: float | None = None

    # Who the task belongs to: "" is the local user (stdio, a shared bearer token); with per-user tokens
    # (JWT) the token's subject. Another owner's task is "not found" to everyone but its owner.
    owner: str = LOCAL_OWNER
    # The per-task secret a RunAPI completion callback must carry (when webhooks are on).
    callback_token: str | None = None
    max_outputs: int | None = None  # the most images a task of this model returns (from the catalog)
    price_cents: int | None = None  # RunAPI's quote for the task, taken before the create
    cost_cents: int | None = None  # what RunAPI reported the task cost (usage.cost), once it reports it
    # Where a copy of each picture goes when the task completes (the tool's save_as, absolute; tasks.saving).
    save_as: str | None = None
    history: list[StatusChange] = Field(default_factory=list)

    def updated(self, *, at: float, **changes: Any) -> TaskRecord:
        """A validated copy with ``changes`` applied, ``updated_at`` set to ``at``, a status change recorded."""
        now = at
        data = {**self.model_dump(), **changes, "updated_at": now}
        if changes.get("status", self.status) != self.status:
            data["history"] = [*data["history"], {"status": changes["status"], "at": now}]
        return TaskRecord.model_validate(data)

    @property
    def ids(self) -> tuple[str, ...]:
        """Every id the task is known by: the server's, and RunAPI's once known."""
        return (self.task_id, self.upstream_id) if self.upstream_id else (self.task_id,)

    @property
    def spend_cents(self) -> int:
        """What the task counts against the daily spend: RunAPI's reported cost where it reported one; the
        quote until then; nothing for a failed task RunAPI reported no cost for (it charged nothing).

        The one rule for every store (the SQL stores say the same in SQL: ``SPEND_SQL``)."""
        if self.cost_cents is not None:
            return self.cost_cents
        return 0 if self.status == "failed" else (self.price_cents or 0)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def kind_key(self) -> str:
        """What tasks of similar duration share: model and resolution (:func:`kind_key`)."""
        return kind_key(self.model, self.resolution)

    @property
    def missing_outputs(self) -> bool:
        """Completed, with an output RunAPI listed that is not in the library (a download to try again).

        The one rule for the store (a task to take up after a restart) and the manager (a refetch)."""
        return self.status == "completed" and any(image.path is None and image.url for image in self.images)
