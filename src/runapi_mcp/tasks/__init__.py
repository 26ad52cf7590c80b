"""Task manager layer: polling, the task store, the image library and image references."""

from runapi_mcp.tasks.durations import DurationFile, DurationModel
from runapi_mcp.tasks.images import IMAGE_URI_PREFIX, ImageStore, Preview
from runapi_mcp.tasks.manager import TaskManager, UnknownTaskError
from runapi_mcp.tasks.records import TERMINAL, ImageRecord, TaskRecord, TaskStatus
from runapi_mcp.tasks.references import ImageReferenceError, ImageResolver
from runapi_mcp.tasks.schedule import PollPolicy, PollSchedule, PollState
from runapi_mcp.tasks.store import MemoryTaskStore, TaskStore

__all__ = [
    "IMAGE_URI_PREFIX",
    "TERMINAL",
    "DurationFile",
    "DurationModel",
    "ImageRecord",
    "ImageReferenceError",
    "ImageResolver",
    "ImageStore",
    "MemoryTaskStore",
    "PollPolicy",
    "PollSchedule",
    "PollState",
    "Preview",
    "TaskManager",
    "TaskRecord",
    "TaskStatus",
    "TaskStore",
    "UnknownTaskError",
]
