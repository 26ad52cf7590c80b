"""Task manager layer: polling, the task store, the image library and image references."""

from runapi_mcp.client import TaskStatus
from runapi_mcp.tasks.availability import Availability, UpstreamModel
from runapi_mcp.tasks.durations import DurationMemory, DurationModel
from runapi_mcp.tasks.images import IMAGE_URI_PREFIX, ImageFileError, ImageStore, Preview
from runapi_mcp.tasks.manager import TaskManager, UnknownTaskError
from runapi_mcp.tasks.ownership import MissingOwnerError
from runapi_mcp.tasks.poller import LocalClaims, TaskClaims
from runapi_mcp.tasks.previews import PreviewSkipped, make_previews
from runapi_mcp.tasks.records import (
    LOCAL_OWNER,
    STATES,
    TERMINAL,
    UNFINISHED,
    ImageRecord,
    StatusChange,
    TaskRecord,
    TaskState,
    current_owner,
    ended,
)
from runapi_mcp.tasks.references import ImageReferenceError, ImageResolver
from runapi_mcp.tasks.sandbox import SandboxError
from runapi_mcp.tasks.schedule import PollPolicy, PollSchedule, PollState
from runapi_mcp.tasks.store import HeldSpend, InvalidCursorError, MemoryTaskStore, TaskPage, TaskStore

__all__ = [
    "IMAGE_URI_PREFIX",
    "LOCAL_OWNER",
    "STATES",
    "TERMINAL",
    "UNFINISHED",
    "Availability",
    "DurationMemory",
    "DurationModel",
    "HeldSpend",
    "ImageFileError",
    "ImageRecord",
    "ImageReferenceError",
    "ImageResolver",
    "ImageStore",
    "InvalidCursorError",
    "LocalClaims",
    "MemoryTaskStore",
    "MissingOwnerError",
    "PollPolicy",
    "PollSchedule",
    "PollState",
    "Preview",
    "PreviewSkipped",
    "SandboxError",
    "StatusChange",
    "TaskClaims",
    "TaskManager",
    "TaskPage",
    "TaskRecord",
    "TaskState",
    "TaskStatus",
    "TaskStore",
    "UnknownTaskError",
    "UpstreamModel",
    "current_owner",
    "ended",
    "make_previews",
]
