"""``runapi-mcp serve`` (and plain ``runapi-mcp``): serve MCP over stdio, or over HTTP."""

from __future__ import annotations

import argparse
import contextlib
import sys

import anyio

from runapi_mcp.commands.options import add_settings_flags, port, run_configured
from runapi_mcp.config import ConfigError, Settings

NAME = "serve"
HELP = "Serve MCP over stdio (the default command) or HTTP"
TRANSPORTS = ("stdio", "streamable-http", "sse", "http")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="stdio",
        help="stdio (default; one client), streamable-http (/mcp), sse (/sse, legacy clients), "
        "or http (both /mcp and /sse in one process)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="HTTP: address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=port, default=8000, help="HTTP: port (default 8000; 0 for any free port)")
    add_settings_flags(parser, sub=True)


def run(args: argparse.Namespace) -> int:
    """Serve until the client closes stdin or a signal stops the server: 0; 2 on a bad setting."""
    return run_configured(args, lambda settings: _serve(args, settings))


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    transport = getattr(args, "transport", "stdio")  # plain `runapi-mcp` has no serve flags
    if transport == "stdio":
        from runapi_mcp.app import serve_stdio

        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(serve_stdio, settings)
        return 0
    # The HTTP stack (uvicorn, JWT verification) only for an HTTP server: stdio starts without it.
    from runapi_mcp.http.app import HttpOptions
    from runapi_mcp.http.serve import serve_http

    chosen = ("streamable-http", "sse") if transport == "http" else (transport,)
    options = HttpOptions(
        transports=frozenset(chosen),  # type: ignore[arg-type]
        host=args.host,
        port=args.port,
        public_url=settings.public_url,
        jwt_issuer=settings.jwt_issuer,
    )
    try:
        anyio.run(serve_http, settings, options)
    except ConfigError as exc:
        print(f"runapi-mcp: {exc}", file=sys.stderr)
        return 2
    return 0
