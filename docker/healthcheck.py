"""The container's HEALTHCHECK: ``GET /health`` of an HTTP server; a stdio server is always healthy.

    python /usr/local/lib/runapi-mcp/healthcheck.py [pid]

One image runs either way, and Docker applies its HEALTHCHECK to every container. A stdio server has no
port to ask (its health is its client's pipe, and it exits when the client goes), so reporting it unhealthy
would only be noise: orchestrators restart or drain unhealthy containers. Whether there is a port is read
from the server's own command line (``/proc/<pid>/cmdline``: transport, host and port are flags only), i.e.
what it was told to do, not from what is listening: an HTTP server that never manages to listen is unhealthy,
not mistaken for stdio.

Exit 0: healthy (stdio, or ``/health`` answered 200 with ``{"status": "ok"}``); 1: unhealthy. Standard
library only: it runs in the slim image beside the server, under the same user.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

DEFAULT_PORT = 8000
TIMEOUT_S = 4.0  # under the HEALTHCHECK's --timeout, so a hung server is a clean failure, not a kill
_NAMES = {"runapi-mcp", "runapi_mcp"}
# Hosts that mean "every interface" (a dual-stack "::" takes IPv4 too) or IPv4 loopback: the check goes to
# 127.0.0.1. Any other host, "::1" included, is asked at its own address.
_ANY = {"", "0.0.0.0", "::", "[::]", "localhost", "127.0.0.1"}


def _is_server(argv: list[str]) -> bool:
    """``runapi-mcp ...`` (the console script, run by python via its shebang) or ``python -m runapi_mcp``."""
    head = argv[:3]
    return any(os.path.basename(arg) in _NAMES for arg in head[:2]) or (
        len(head) >= 3 and head[1] == "-m" and head[2] in _NAMES
    )


def _read_argv(pid: str) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0")[:-1]]


def find_server() -> str | None:
    """The server's pid: PID 1 normally; the first ``runapi-mcp`` process under an init (``--init``)."""
    own = str(os.getpid())
    pids = sorted((p for p in os.listdir("/proc") if p.isdigit() and p != own), key=int)
    for pid in pids:
        try:
            if _is_server(_read_argv(pid)):
                return pid
        except OSError:  # gone meanwhile, or not ours
            continue
    return None


def _option(argv: list[str], name: str) -> str | None:
    """The last value given to ``--name`` (``--name v`` or ``--name=v``), as argparse would keep."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


def health_url(argv: list[str]) -> str | None:
    """Where the server answers ``/health``; None when it serves stdio (or runs no server at all)."""
    commands = [arg for arg in argv if arg in ("serve", "simulate", "demo", "tasks")]
    if commands and commands[0] != "serve":
        return None  # `docker run ... runapi-mcp demo` and the like: nothing to check
    transport = _option(argv, "--transport") or "stdio"
    if transport == "stdio":
        return None
    port = _option(argv, "--port") or str(DEFAULT_PORT)
    host = _option(argv, "--host") or ""
    host = "127.0.0.1" if host in _ANY else (f"[{host}]" if ":" in host and not host.startswith("[") else host)
    return f"http://{host}:{int(port)}/health"


def check(url: str) -> bool:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:  # our own http:// URL: no file: or other scheme
        body = json.loads(answer.read(65536) or b"null")
        return answer.status == 200 and isinstance(body, dict) and body.get("status") == "ok"


def main(args: list[str]) -> int:
    pid = args[0] if args else find_server()
    if pid is None:
        print("healthcheck: no runapi-mcp process found", file=sys.stderr)
        return 1
    try:
        url = health_url(_read_argv(pid))
    except (OSError, ValueError) as exc:
        print(f"healthcheck: cannot read the server's command line: {exc}", file=sys.stderr)
        return 1
    if url is None:
        return 0  # stdio (or no server command): healthy by design, see the module docstring
    try:
        ok = check(url)
    except (OSError, ValueError) as exc:  # refused, timed out, not JSON
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print(f"healthcheck: {url} did not answer 200 with status ok", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
