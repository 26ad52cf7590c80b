"""Where task records live. In memory for now; the interface is what a persistent store implements."""

from __future__ import annotations

from typing import Protocol

from runapi_mcp.tasks.records import TaskRecord


class TaskStore(Protocol):
    """Keeps task records by upstream task id. Implementations must be safe to call from one event loop."""

    async def save(self, record: TaskRecord) -> None: ...

    async def get(self, task_id: str) -> TaskRecord | None: ...

    async def list(self, *, limit: int = 50, active_only: bool = False) -> list[TaskRecord]: ...


class MemoryTaskStore:
    """A process-local store: tasks are forgotten on exit."""

    def __init__(self) -> None:
        self._records: dict[str, TaskRecord] = {}

    async def save(self, record: TaskRecord) -> None:
        self._records[record.task_id] = record.model_copy(deep=True)

    async def get(self, task_id: str) -> TaskRecord | None:
        record = self._records.get(task_id)
        return record.model_copy(deep=True) if record else None

    async def list(self, *, limit: int = 50, active_only: bool = False) -> list[TaskRecord]:
        records = sorted(self._records.values(), key=lambda r: r.created_at, reverse=True)
        if active_only:
            records = [r for r in records if not r.terminal]
        return [r.model_copy(deep=True) for r in records[:limit]]
