"""A stand-in for a foreign host: a second loopback port that answers every request the same way and
records who asked, so a test can check that a client never contacted it (or what it sent when it did)."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

from starlette.types import Receive, Scope, Send

from runapi_mcp.simulator import _png
from runapi_mcp.simulator._server import ThreadServer, _url, serve_in_thread, stop_thread


@dataclass(frozen=True)
class HostRequest:
    """One request an ``ImageHost`` answered. As in the simulator's log, the Authorization header is never
    stored: only whether one was sent (any at all is a key leaked to a foreign host)."""

    method: str
    path: str
    query: str
    sent_auth: bool
    time: float
    """``time.monotonic()`` when the request arrived."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ImageHost:
    """Answers every request on its own loopback port with ``body`` (default: a small real PNG, unlike
    any picture the simulator renders), ``status`` and ``content_type``, and records each request.

        with ImageHost() as host:
            sim.inject(Fault("image_urls", urls=[host.url("/cat.png")]))
            ...
            assert not host.hit
    """

    def __init__(
        self,
        body: bytes | None = None,
        *,
        status: int = 200,
        content_type: str = "image/png",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.body = _png.small_png(48, 48) if body is None else body
        self.status = status
        self.content_type = content_type
        self.headers = dict(headers or {})
        self._lock = threading.Lock()
        self._log: list[HostRequest] = []
        self._server: ThreadServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        names = {name.lower() for name, _ in scope["headers"]}
        entry = HostRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            sent_auth=b"authorization" in names,
            time=time.monotonic(),
        )
        with self._lock:
            self._log.append(entry)
        headers = [
            (b"content-type", self.content_type.encode("latin-1")),
            (b"content-length", str(len(self.body)).encode()),
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()),
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, port: int = 0, host: str = "127.0.0.1", *, timeout: float = 10.0) -> str:
        if self._thread is not None:
            raise RuntimeError("the image host is already running")
        self._server, self._thread, bound = serve_in_thread(
            self._app, host, port, timeout=timeout, name="runapi-sim-host"
        )
        self._base_url = _url(host, bound)
        return self._base_url

    def stop(self, timeout: float = 5.0) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self._base_url = None
        if server is not None and thread is not None:
            stop_thread(server, thread, timeout)

    def __enter__(self) -> ImageHost:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- inspection ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the image host is not running: call start()")
        return self._base_url

    def url(self, path: str = "/image.png") -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    @property
    def requests(self) -> list[HostRequest]:
        with self._lock:
            return list(self._log)

    @property
    def hit(self) -> bool:
        """Whether anything asked this host for anything."""
        with self._lock:
            return bool(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()
