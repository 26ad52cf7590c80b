"""RunAPI's completion callbacks: ``POST /callbacks/runapi/{task_id}?token=...``.

RunAPI carries no credential of ours, so this route takes no bearer token: the per-task secret in the
URL is the credential, and ``TaskManager.callback`` checks it. An unknown task and a wrong token get the
same 404, so task ids cannot be probed. The body is read, up to 64 KiB and for a few seconds at most (a
caller cannot hold a connection with an endless one), and thrown away: the manager asks RunAPI for the
task's status itself, so a forged or replayed body can change nothing.

The token is never logged: this module logs none, and uvicorn's access log (which prints the query
string) gets a filter that hides ``token=`` values.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# Defined in config (Settings.callback_base is built from it); re-exported here, where the routes are.
from runapi_mcp.config import CALLBACK_PATH as CALLBACK_PATH
from runapi_mcp.tasks import TaskManager

log = logging.getLogger("runapi_mcp.http")

MAX_CALLBACK_BODY = 64 * 1024
_BODY_DEADLINE_S = 5.0
_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&#\s\"]*")
# Every method reaches the handler, which answers 405 itself (Starlette's own 405 is plain text, and a
# function route without methods takes GET only).
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class HideCallbackTokens(logging.Filter):
    """Hides the value of every ``token=`` query parameter in a log record (uvicorn's access log line
    carries the full path and query of each request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _hidden(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_hidden(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


def _hidden(text: str) -> str:
    return _TOKEN_IN_QUERY.sub(r"\1[hidden]", text)


def hide_tokens_in_access_log() -> None:
    """Install ``HideCallbackTokens`` on uvicorn's access logger, once (it logs there directly)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, HideCallbackTokens) for f in access.filters):
        access.addFilter(HideCallbackTokens())


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def _drain(request: Request) -> None:
    """Read and drop the body: at most ``MAX_CALLBACK_BODY`` bytes, for at most a few seconds."""
    total = 0
    with anyio.move_on_after(_BODY_DEADLINE_S):
        try:
            async for chunk in request.stream():
                total += len(chunk)
                if total > MAX_CALLBACK_BODY:
                    return  # the rest is never read (the server closes the connection after answering)
        except ClientDisconnect:
            return


def callback_routes(manager: TaskManager, *, path: str = CALLBACK_PATH) -> list[Route]:
    """The callback endpoint for ``manager``'s tasks: 204 for a valid callback, 404 (one answer for an
    unknown task and a wrong token) otherwise, 405 for a method other than POST."""
    hide_tokens_in_access_log()

    async def runapi_callback(request: Request) -> Response:
        if request.method != "POST":
            return _error(405, "method not allowed: RunAPI callbacks are POSTed", Allow="POST")
        await _drain(request)
        task_id: Any = request.path_params.get("task_id", "")
        token = request.query_params.get("token", "")
        try:
            valid = await manager.callback(str(task_id), token)
        except Exception:  # the store failed: RunAPI may call again, and the fallback poll still runs
            log.exception("could not check a RunAPI callback for task %.80r", task_id)
            return _error(503, "temporarily unavailable")
        if not valid:
            log.info("refused a RunAPI callback for task %.80r: unknown task or wrong token", task_id)
            return _error(404, "not found")
        return Response(status_code=204)

    return [Route(path.rstrip("/") + "/{task_id}", runapi_callback, methods=_ALL_METHODS, name="runapi_callback")]
