"""Several ``runapi-mcp serve`` processes on one PostgreSQL schema and one shared directory, behind the loopback
proxy (tests/proxy.py): the deployment of docs/deployment.md, on one machine. Used by tests/test_scale_out.py and
bench/scale_out.py.

Each instance is a real subprocess started as an operator would (``serve --transport http``, settings in its
environment), so ``kill -9`` is a real crash: no shutdown code runs, its leases are left to expire. The
instances share ``RUNAPI_MCP_HOME`` (the image library) and the database. Each names itself (host, pid, a
random part) in the ``User-Agent`` of its RunAPI requests, which the simulator logs: who polled what is read
from the simulator's side, not from the servers' own word (:meth:`Cluster.instance_of`, by the pid).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from tests.proxy import LoopbackProxy
from tests.support import SIM_KEY, free_port, healthy

TOKEN = "scale-out-shared-token-0123456789abcdef"
START_S = 60.0  # an instance's start (imports, migrations, the first claim) on a loaded 2-core machine


def serve_command(port: int) -> list[str]:
    """How an operator starts an instance: ``runapi-mcp serve --transport http --port <port>``."""
    return [sys.executable, "-m", "runapi_mcp", "serve", "--transport", "http", "--port", str(port)]


def instance_name(index: int) -> str:
    return f"instance-{index}"


# How an instance names itself to RunAPI: "runapi-mcp/0.1.0 (instance <host>-<pid>-<random>)"; also its lease
# holder id in the database.
_NAMED = re.compile(r"\(instance (?P<holder>[^)\s]+)\)")


def holder_pid(holder: str) -> int | None:
    """The process id in an instance's id (``<host>-<pid>-<random>``)."""
    parts = holder.rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


@dataclass
class Instance:
    """One ``runapi-mcp serve`` process; started again on the same port by :meth:`start`."""

    index: int
    port: int
    env: dict[str, str]
    log: Path
    command: Callable[[int], list[str]] = serve_command
    proc: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)  # of every process started as this instance

    @property
    def name(self) -> str:
        return instance_name(self.index)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command(self.port), env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        self.pids.append(self.proc.pid)

    def ready(self) -> bool:
        """Answering its health check; raises if the process ended (its log's tail says why)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        return healthy(self.url)

    def kill(self) -> None:
        """``kill -9``: no shutdown, no lease released, connections cut by the kernel."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, as a supervisor stops it (SIGKILL if it has not ended in 20 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def cpu_s(self) -> float:
        """User + system CPU time the process has used so far (``/proc/<pid>/stat``)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Cluster:
    """``count`` instances behind one :class:`LoopbackProxy`, sharing ``database_url`` and ``shared``.

    ``webhooks``: the instances' public URL is the proxy's, so RunAPI's completion callbacks reach whichever
    instance the proxy picks (as through a real load balancer). ``env``: more settings for every instance.
    ``command``: how each is started, given its port (by default :func:`serve_command`).
    """

    sim_url: str
    database_url: str
    shared: Path
    count: int = 3
    env: Mapping[str, str] = field(default_factory=dict)
    webhooks: bool = False
    command: Callable[[int], list[str]] = serve_command
    instances: list[Instance] = field(init=False, default_factory=list)
    proxy: LoopbackProxy = field(init=False)

    def __post_init__(self) -> None:
        ports = [free_port() for _ in range(self.count)]
        self.proxy = LoopbackProxy([f"http://127.0.0.1:{port}" for port in ports])
        self.home = self.shared / "home"
        self.inputs = self.shared / "inputs"
        self.logs = self.shared / "logs"
        for path in (self.home, self.inputs, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        self.instances = [
            Instance(index, port, {}, self.logs / f"{instance_name(index)}.log", self.command)
            for index, port in enumerate(ports)
        ]

    @property
    def url(self) -> str:
        return self.proxy.url

    def holder_of(self, holder: str | None) -> int | None:
        """Which instance (by index) a lease holder id names; None for none of them."""
        pid = holder_pid(holder) if holder else None
        return next((i.index for i in self.instances if pid in i.pids), None)

    def instance_of(self, user_agent: str) -> int | None:
        """Which instance sent a request, from the ``User-Agent`` the simulator logged; None: none of them."""
        match = _NAMED.search(user_agent)
        return self.holder_of(match["holder"]) if match else None

    def _env(self, instance: Instance) -> dict[str, str]:
        env = {
            **os.environ,
            "RUNAPI_API_KEY": SIM_KEY,
            "RUNAPI_BASE_URL": self.sim_url,
            "RUNAPI_MCP_HOME": str(self.home),
            "RUNAPI_MCP_ALLOWED_DIRS": str(self.inputs),
            "RUNAPI_MCP_DATABASE_URL": self.database_url,
            "RUNAPI_MCP_AUTH_TOKEN": TOKEN,
            "RUNAPI_MCP_LOG_LEVEL": "INFO",
            **self.env,
        }
        if self.webhooks:
            env["RUNAPI_MCP_PUBLIC_URL"] = self.proxy.url
        return env

    def start(self) -> str:
        """The proxy, then every instance (at once); returns the proxy's URL once all are healthy."""
        self.proxy.start()
        for instance in self.instances:
            instance.env = self._env(instance)
            instance.start()
        self.wait_ready(self.instances)
        return self.proxy.url

    def wait_ready(self, instances: Sequence[Instance]) -> None:
        deadline = time.monotonic() + START_S
        waiting = list(instances)
        while waiting:
            waiting = [i for i in waiting if not i.ready()]
            if waiting and time.monotonic() > deadline:
                raise AssertionError(f"not healthy within {START_S:g} s: {[i.name for i in waiting]}")
            time.sleep(0.05)

    def restart(self, index: int) -> None:
        instance = self.instances[index]
        instance.stop()
        instance.start()
        self.wait_ready([instance])

    def stop(self) -> None:
        for instance in self.instances:
            if instance.alive:
                assert instance.proc is not None
                instance.proc.send_signal(signal.SIGTERM)
        for instance in self.instances:
            instance.stop()
        self.proxy.stop()

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, *, mode: str = "legacy", **kw: Any) -> Client:
        """An MCP client through the proxy: ``legacy`` (a 2025-era session, pinned to the instance that
        issued it) or a 2026 version (stateless: every request to the next instance)."""
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        stream = streamable_http_client(f"{self.proxy.url}/mcp", http_client=http)
        return Client(stream, mode=mode, **kw)
