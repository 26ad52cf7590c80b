"""Running the simulator: in a background thread (tests, benchmarks) or in the foreground (``serve``)."""

from __future__ import annotations

import copy
import shutil
import socket
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp
from uvicorn.config import LOGGING_CONFIG

from runapi_mcp.simulator._app import SimulatorApp
from runapi_mcp.simulator._models import (
    CatalogStatus,
    Fault,
    LoggedRequest,
    SentCallback,
    SimulatorConfig,
    TaskOutcome,
)
from runapi_mcp.simulator._state import Outcome, SimState

# The simulator's uvicorn server (this island's one module that imports uvicorn).
ThreadServer = uvicorn.Server


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_in_thread(
    app: ASGIApp, host: str, port: int, *, timeout: float, name: str
) -> tuple[uvicorn.Server, threading.Thread, int]:
    """Serve ``app`` on ``host:port`` (0: an ephemeral port) from a daemon thread; returns once the port
    accepts connections, with the server, its thread and the bound port."""
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        interface="asgi3",  # uvicorn would take a bound method (ImageHost's app) for ASGI 2
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"{name}:{bound_port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError(f"{name} failed to start")
        if time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"{name} did not start within {timeout} s")
        time.sleep(0.005)
    return server, thread, bound_port


def stop_thread(server: uvicorn.Server, thread: threading.Thread, timeout: float) -> None:
    """Stop a server started by ``serve_in_thread`` (open connections are closed)."""
    server.should_exit = True
    thread.join(timeout)
    if thread.is_alive():
        server.force_exit = True
        thread.join(timeout)


class Simulator:
    """A RunAPI look-alike on a real loopback HTTP port.

    ``start()`` serves it from a daemon thread and returns the base URL; ``stop()`` shuts it down (it can
    be started again, on the same port if given, keeping its tasks and uploads); ``close()`` (or leaving
    ``with``) also deletes its temporary files.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self._data_dir = Path(tempfile.mkdtemp(prefix="runapi-sim-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._data_dir), True)
        self._state = SimState(self.config, self._data_dir)
        self._http = SimulatorApp(self._state)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        self._port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def app(self) -> Starlette:
        """The ASGI application (usable without ``start()``, e.g. with ``httpx.ASGITransport``)."""
        return self._http.app

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the simulator is not running: call start()")
        return self._base_url

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, port: int = 0, host: str = "127.0.0.1", *, timeout: float = 10.0) -> str:
        """Serve on ``host:port`` (0: an ephemeral port) from a daemon thread; returns the base URL once
        the port accepts connections."""
        if self.running:
            raise RuntimeError("the simulator is already running")
        if not self._cleanup.alive:
            raise RuntimeError("the simulator was closed")
        server, thread, bound_port = serve_in_thread(
            self.app, host, port, timeout=timeout, name="runapi-sim"
        )
        self._server, self._thread, self._port = server, thread, bound_port
        self._base_url = _url(host, bound_port)
        return self._base_url

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving (open connections are closed). Safe to call when not running."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self._base_url = None
        if server is None or thread is None:
            return
        stop_thread(server, thread, timeout)

    def close(self) -> None:
        """Stop and delete the simulator's temporary files (rendered pictures, uploads)."""
        self.stop()
        self._state.shutdown()
        self._cleanup()

    def __enter__(self) -> Simulator:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def reset(self) -> None:
        """Forget everything since the start, as a new simulator would (it keeps serving on the same port):
        tasks, uploads, idempotency records, faults, queued outcomes (``set_task_outcome(None, ...)``),
        catalog statuses, ``configure`` changes, the balance, the request log and the callbacks. Also
        ``POST /_sim/reset``."""
        self._state.reset()

    # -- inspection ------------------------------------------------------------------------------
    @property
    def requests(self) -> list[LoggedRequest]:
        """Every answered request, oldest first (``/_sim/`` control requests excluded)."""
        return self._state.requests()

    def clear_log(self) -> None:
        """Forget the requests answered and the callbacks made."""
        self._state.clear_log()

    @property
    def callbacks(self) -> list[SentCallback]:
        """Every completion callback made to a task's ``callback_url`` (or dropped by a fault), oldest
        first. A task created with a ``callback_url`` (loopback only) is called back once when it ends."""
        return self._state.callbacks()

    @property
    def open_streams(self) -> int:
        """Answers still being streamed (``trickle``, ``odd_json`` huge): 0 once every client that got one
        has read it all or hung up."""
        with self._state.lock:
            return self._state.open_streams

    @property
    def tasks_created(self) -> int:
        """Distinct upstream tasks created (billing events; idempotent replays do not count)."""
        with self._state.lock:
            return self._state.tasks_created

    @property
    def balance_cents(self) -> int:
        with self._state.lock:
            return self._state.balance_cents

    def set_balance(self, cents: int) -> None:
        self._state.set_balance(cents)

    @property
    def task_ids(self) -> list[str]:
        """Ids of the created tasks, oldest first."""
        with self._state.lock:
            return list(self._state.tasks)

    def task_status(self, task_id: str) -> dict[str, Any]:
        """The status answer a client polling ``task_id`` would get now (``base_url`` must be set)."""
        task = self._state.get_task(task_id)
        if task is None:
            raise KeyError(f"no task {task_id!r}")
        answer, _ = self._http.status_answer(task, self._base_url or "http://simulator")
        return answer

    def completed_at(self, task_id: str) -> float | None:
        """The ``time.monotonic()`` moment the task completes (its status turns ``completed`` and its
        images become downloadable); it may lie in the future. ``None`` when the task fails or is held
        running. Raises KeyError for an unknown task id."""
        with self._state.lock:
            task = self._state.tasks.get(task_id)
            if task is None:
                raise KeyError(f"no task {task_id!r}")
            return task.completed_at()

    def task_request(self, task_id: str) -> dict[str, Any]:
        """The JSON body the task was created with."""
        task = self._state.get_task(task_id)
        if task is None:
            raise KeyError(f"no task {task_id!r}")
        return copy.deepcopy(task.body)

    # -- steering --------------------------------------------------------------------------------
    def inject(self, fault: Fault) -> None:
        """Add a fault (a copy is kept; faults are tried in the order injected)."""
        self._state.inject(fault)

    def clear_faults(self) -> None:
        self._state.clear_faults()

    @property
    def faults(self) -> list[Fault]:
        """The faults still armed (copies), with their remaining ``times``."""
        return self._state.faults()

    def configure(self, **changes: Any) -> None:
        """Change settings while running: ``legacy``, ``upload_lifetime_s``, ``status_retry_after``,
        ``report_progress``, ``id_style`` (as in ``SimulatorConfig``; ValueError when invalid).
        Also ``POST /_sim/config`` with the same names as JSON."""
        self._state.configure(changes)

    def set_catalog_status(self, model: str, status: CatalogStatus, action: str | None = None) -> None:
        """Set a model's ``catalog_status`` in the price schedules (``active``, ``maintenance``,
        ``disabled``), on one ``action`` (endpoint, ``_`` or ``-``) or on all (None). Creates of a model in
        ``maintenance`` answer 503 (``model_maintenance``), of a ``disabled`` one 422 (``model_disabled``,
        field ``model``). The schedules' ETag changes. Also ``POST /_sim/catalog_status``."""
        self._state.set_catalog_status(model, status, action)

    def set_task_outcome(
        self,
        task_id: str | None = None,
        status: TaskOutcome = "completed",
        *,
        error: str | None = None,
        status_text: str | None = None,
        images: int | None = None,
        cost_cents: int | None = None,
    ) -> None:
        """Force how a task ends, now.

        ``status``: ``completed`` (finish now), ``failed`` (fail now with ``error``), ``running`` (never
        finish: for polling time-outs). ``status_text`` replaces the terminal status string (e.g.
        ``"SUCCESS"``, ``"generate_failed"``; ``failed`` with ``status_text`` ``"timeout"``, ``"canceled"``,
        ``"error"`` or an unknown one such as ``"exploded"`` ends the task with that status and ``error``,
        and no usage); ``images`` limits how many images a completed task lists; ``cost_cents`` is what a
        completed task's ``usage.cost`` reports (default its price)
        (0: a completed task without images). ``task_id=None`` applies to the next task created.
        Raises KeyError for an unknown task id.
        """
        if status not in ("completed", "failed", "running"):
            raise ValueError("status must be 'completed', 'failed' or 'running'")
        self._state.set_outcome(task_id, Outcome(status, error, status_text, images, cost_cents))


def _log_config() -> dict[str, Any]:
    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    config["handlers"]["default"]["stream"] = "ext://sys.stderr"
    return config


def serve(host: str, port: int, config: SimulatorConfig) -> None:
    """Run the simulator in the foreground until interrupted; logs go to stderr.

    Returns normally after Ctrl-C (SIGINT); SIGTERM ends the process as usual.
    """
    sim = Simulator(config)
    sock = _bind(host, port)
    url = _url(host, sock.getsockname()[1])
    key = "any bearer key" if config.api_key is None else "the configured key"
    print(
        f"RunAPI simulator listening on {url}  (accepts {key}; time_scale {config.time_scale:g}; "
        f"control API under {url}/_sim/)",
        file=sys.stderr,
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            sim.app, log_config=_log_config(), log_level="info", lifespan="off", timeout_graceful_shutdown=2
        )
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled: that is a normal stop
        pass
    finally:
        sock.close()
        sim.close()
