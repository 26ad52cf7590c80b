"""The stdio transport (the SDK's), watched so that a stop can tell when the waiting calls have answered.

A client ending its session stops the server with signals, and does not wait long: Claude Code sends SIGINT,
SIGTERM 100 ms later and SIGKILL at about 0.5 s. The stop wakes every waiting call (each answers "still
running" with its task id) and ends the process as soon as those answers are on the wire, rather than after a
fixed pause. For that this module counts, around the SDK's transport:

- tool calls received and not answered yet (``tools/call`` only: a ``tasks/result`` or a listen stream
  stays open by design, and is not waited for);
- messages handed to the transport's stdout writer and messages written (flushed) to the pipe.

The SDK's transport points fd 1 at stderr while it serves (a stray ``print`` never lands on the wire) when it
owns stdout; here stdout is passed in, so :func:`_claimed_stdout` does the same.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, BinaryIO, Generic, NoReturn, Protocol, Self, TypeVar

import anyio
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp.types import JSONRPCError, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse, RequestId

from runapi_mcp.server import RunAPIMCPServer
from runapi_mcp.server.sdk import ReadStream, WriteStream

# How often the stop looks whether everything is answered and written (it waits for at most its cap).
_SETTLE_POLL_S = 0.002


class _CountedStdout(io.TextIOWrapper):
    """The wire, counting messages written and messages flushed (the SDK's writer writes a message, then
    flushes; both run in worker threads, one after the other)."""

    writes = 0
    flushed = 0

    def write(self, s: str) -> int:
        n = super().write(s)
        self.writes += 1
        return n

    def flush(self) -> None:
        pending = self.writes
        super().flush()
        self.flushed = pending

    def close(self) -> None:
        # The buffer is not this wrapper's to close (sys.stdout's own, or a descriptor a worker may still use).
        with contextlib.suppress(ValueError):
            self.detach()


class StdioTransport:
    """``runapi-mcp serve`` on stdin/stdout; :meth:`settled` says when nothing is left to answer or write."""

    def __init__(self) -> None:
        self.calls: set[RequestId] = set()  # tools/call requests read and not answered
        self._sending = 0  # messages the server is handing to the stdout writer right now
        self._handed = 0  # messages the stdout writer took
        self._stdout: _CountedStdout | None = None

    async def serve(self, server: RunAPIMCPServer) -> None:
        """Serve one client until it closes stdin."""
        with _claimed_stdout() as wire:
            self._stdout = _CountedStdout(wire, encoding="utf-8")
            stdout = anyio.wrap_file(self._stdout)
            async with stdio_server(stdout=stdout) as (read_stream, write_stream):
                await server.run_streams(_Reading(read_stream, self), _Writing(write_stream, self))

    def settled(self) -> bool:
        """No tool call waits for its answer, and every message handed out is written to the pipe."""
        written = self._stdout.flushed if self._stdout is not None else self._handed
        return not self.calls and self._sending == 0 and written >= self._handed

    async def wait_settled(self) -> None:
        # A poll: the flushes are counted in the writer's worker thread, which sets no event.
        while not self.settled():  # noqa: ASYNC110
            await anyio.sleep(_SETTLE_POLL_S)

    # -- what the streams report ------------------------------------------------------------------
    def _received(self, item: SessionMessage | Exception) -> None:
        if not isinstance(item, SessionMessage):
            return
        message = item.message
        if isinstance(message, JSONRPCRequest) and message.method == "tools/call":
            self.calls.add(message.id)
        elif isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled":
            # A cancelled request may never be answered.
            params = message.params or {}
            self.calls.discard(params.get("requestId"))

    def _sent(self, item: SessionMessage) -> None:
        self._handed += 1
        if isinstance(item.message, (JSONRPCResponse, JSONRPCError)) and item.message.id is not None:
            self.calls.discard(item.message.id)


class _Closable(Protocol):
    async def aclose(self) -> None: ...


_Stream = TypeVar("_Stream", bound=_Closable)


class _Wrapped(Generic[_Stream]):
    """What both wrapped streams share: closing closes the SDK's stream, as a context manager too."""

    _inner: _Stream

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _Reading(_Wrapped[ReadStream[SessionMessage | Exception]]):
    """The transport's read stream, reporting each message read (the sender's context passed on)."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception], transport: StdioTransport) -> None:
        self._inner = inner
        self._transport = transport

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        item = await self._inner.receive()
        self._transport._received(item)
        return item

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        item = await self._inner.__anext__()
        self._transport._received(item)
        return item



class _Writing(_Wrapped[WriteStream[SessionMessage]]):
    """The transport's write stream (no buffer: a send returns once the stdout writer took the message)."""

    def __init__(self, inner: WriteStream[SessionMessage], transport: StdioTransport) -> None:
        self._inner = inner
        self._transport = transport

    async def send(self, item: SessionMessage, /) -> None:
        self._transport._sending += 1
        try:
            await self._inner.send(item)
        finally:
            self._transport._sending -= 1
        self._transport._sent(item)



def end_process() -> NoReturn:
    """End the process now, exit code 0, with the logs flushed (no finalization: nothing is left to run)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


@contextmanager
def _claimed_stdout() -> Iterator[BinaryIO]:
    """The wire: a private duplicate of fd 1, while fd 1 points at stderr (restored after).

    Best effort, as the SDK's own claim: a stdout that is not fd 1 (a test's), or descriptors that cannot be
    duplicated, are used in place."""
    if not _backed_by_fd(sys.stdout, 1):
        yield sys.stdout.buffer
        return
    try:
        private = _dup_above_std(1)
    except OSError:
        yield sys.stdout.buffer
        return
    try:
        os.dup2(2, 1)
    except OSError:
        os.close(private)
        yield sys.stdout.buffer
        return
    try:
        # closefd=False: a worker thread may still be writing to it when the transport ends.
        yield os.fdopen(private, "wb", closefd=False)
    finally:
        with contextlib.suppress(OSError):
            os.dup2(private, 1)


def _backed_by_fd(stream: Any, fd: int) -> bool:
    try:
        return bool(stream.buffer.fileno() == fd)
    except (AttributeError, OSError, ValueError):
        return False


def _dup_above_std(fd: int) -> int:
    """A duplicate of ``fd`` that is not 0, 1 or 2."""
    if sys.platform == "win32":
        duplicate = os.dup(fd)
        if duplicate <= 2:
            os.close(duplicate)
            raise OSError(f"the duplicate of fd {fd} landed in the standard range")
        return duplicate
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
