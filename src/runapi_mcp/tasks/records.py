"""What the server remembers about a task and its pictures: plain data, ready to persist."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, TypeGuard, get_args

from pydantic import BaseModel, ConfigDict, Field

from runapi_mcp.tasks.ownership import LOCAL_OWNER as LOCAL_OWNER  # where the manager has always found them
from runapi_mcp.tasks.ownership import current_owner as current_owner

# A task's states: the one definition, everything else (the stores' filters, the tools' enums, the MCP task
# states, the CLI's and the gallery's choices) is derived from it. RunAPI's own (``client.TaskStatus``, to
# which the client maps RunAPI's words) are pending, processing, completed and failed; here a task is also
# "submitting" before RunAPI has confirmed the create (the task is recorded first, so a create whose answer
# was lost is still known, and re-sent with its key), and "cancelled" once a client cancelled it (MCP
# tasks/cancel): RunAPI has no cancel, so this server only stops tracking it; the state is final, whatever
# RunAPI does with the task afterwards.
RunningState = Literal["pending", "processing"]  # RunAPI has the task and has not finished it
UnfinishedState = Literal["submitting", RunningState]
EndedState = Literal["completed", "failed", "cancelled"]
TaskState = Literal[UnfinishedState, EndedState]  # one flat Literal: a validation error names the field alone
STATES: tuple[TaskState, ...] = get_args(TaskState)  # in the order a task goes through them
TERMINAL: frozenset[TaskState] = frozenset(get_args(EndedState))
UNFINISHED: frozenset[TaskState] = frozenset(get_args(UnfinishedState))


def ended(status: TaskState) -> TypeGuard[EndedState]:
    """Whether a task in ``status`` has ended (completed, failed or cancelled)."""
    return status in TERMINAL


def kind_key(model: str, resolution: str | None) -> str:
    """What tasks of similar duration share, the key ``durations`` learns under: ``model@resolution``
    (``TaskRecord.kind_key`` is this of the task's model and resolution; ``durations._split_kind`` reads it
    back). Here, with the records, so that ``durations`` depends on them and not the other way round."""
    return f"{model}@{resolution or 'default'}"


def new_task_id(at: float | None = None) -> str:
    """The server's own id of a task created at ``at`` (epoch seconds, default now), known before RunAPI
    answers (URI-safe, sortable by creation)."""
    return f"task-{int((time.time() if at is None else at) * 1000):012x}-{uuid.uuid4().hex[:12]}"


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

    # -- transitions: each returns a validated copy and names every field it changes (None included: a
    # note set to None is cleared); ``at`` (epoch seconds, the caller's clock) becomes ``updated_at``.
    def accepted(self, upstream_id: str, *, at: float) -> TaskRecord:
        """RunAPI has the task as ``upstream_id``: it is pending, and a note about an unconfirmed create goes."""
        return self._moved(at, upstream_id=upstream_id, status="pending", error=None)

    def noted(self, note: str | None, *, at: float) -> TaskRecord:
        """Its note (why nothing moves, what went wrong) is now ``note``; None clears it. The state stays."""
        return self._moved(at, error=note)

    def progressed(self, status: RunningState, progress: float | None, *, at: float) -> TaskRecord:
        """Still running upstream, in ``status``, ``progress`` (0..1) done; None: no progress known."""
        return self._moved(at, status=status, progress=progress)

    def costed(self, cost_cents: int | None, *, at: float) -> TaskRecord:
        """RunAPI reported what the task cost (None: it reports nothing, the quote counts)."""
        return self._moved(at, cost_cents=cost_cents)

    def failed(self, error: str, *, at: float) -> TaskRecord:
        """RunAPI refused or failed the task, ``error`` says why. (Not stamped ``completed_at``: it never ran
        to an end here.)"""
        return self._moved(at, status="failed", error=error)

    def completed(
        self, images: list[ImageRecord], remote_urls: list[str], note: str | None, *, at: float
    ) -> TaskRecord:
        """RunAPI finished it: its outputs (``images``, from ``remote_urls``), with ``note`` saying what is
        missing (None: nothing)."""
        return self._moved(
            at, status="completed", progress=1.0, images=images, remote_urls=remote_urls, error=note,
            completed_at=at,
        )

    def refetched(self, images: list[ImageRecord], note: str | None, *, at: float) -> TaskRecord:
        """Its outputs after another download of the missing ones, ``note`` saying what is still missing."""
        return self._moved(at, images=images, error=note)

    def cancelled(self, note: str, *, at: float) -> TaskRecord:
        """A client cancelled it: final, ``note`` says so."""
        return self._moved(at, status="cancelled", error=note, completed_at=at)

    def _moved(self, at: float, **changes: Any) -> TaskRecord:
        """A validated copy with ``changes``, ``updated_at`` at ``at`` and a status change in the history.

        Cancelled is final: the status, note and end time of a cancelled task stay as they are. A create
        answer, poll or download still in flight when it was cancelled must not bring it back to life or
        replace the note saying why it stopped (its other fields, a cost or pictures, still count)."""
        if self.status == "cancelled":
            changes = {k: v for k, v in changes.items() if k not in ("status", "error", "completed_at")}
        data = {**self.model_dump(), **changes, "updated_at": at}
        if changes.get("status", self.status) != self.status:
            data["history"] = [*data["history"], {"status": changes["status"], "at": at}]
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
