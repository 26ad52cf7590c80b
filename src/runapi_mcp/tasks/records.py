"""What the server remembers about a task and its pictures: plain data, ready to persist."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runapi_mcp.client import TaskStatus

TERMINAL: frozenset[TaskStatus] = frozenset({"completed", "failed"})


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


class TaskRecord(BaseModel):
    """One RunAPI task as this server tracks it (the shape the next store persists)."""

    # Every change goes through ``updated()``, so a bad value is caught where it is made.
    model_config = ConfigDict(validate_assignment=True)

    task_id: str
    idempotency_key: str
    status: TaskStatus = "pending"
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

    max_outputs: int | None = None  # the most images a task of this model returns (from the catalog)

    def updated(self, **changes: Any) -> TaskRecord:
        """A validated copy with ``changes`` applied and ``updated_at`` set to now."""
        return TaskRecord.model_validate({**self.model_dump(), **changes, "updated_at": time.time()})

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def kind_key(self) -> str:
        """What tasks of similar duration share: model and resolution."""
        return f"{self.model}@{self.resolution or 'default'}"
