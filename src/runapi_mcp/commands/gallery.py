"""``runapi-mcp gallery``: the web gallery of the library, served alone on loopback (``http.gallery``)."""

from __future__ import annotations

import argparse
import sys

import anyio

from runapi_mcp.commands.options import add_settings_flags, configured, port
from runapi_mcp.config import ConfigError, Settings

NAME = "gallery"
HELP = "Browse the image library in a web browser (served on loopback)"
DEFAULT_PORT = 8766


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="A loopback address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=port, default=None, help=f"Port (default {DEFAULT_PORT}, or any free one if taken)"
    )
    add_settings_flags(parser, sub=True)


def run(args: argparse.Namespace) -> int:
    settings = configured(args)
    if settings is None:
        return 2
    return run_gallery(settings, args.host, args.port)


def run_gallery(settings: Settings, host: str, port: int | None) -> int:
    """Serve until Ctrl-C (or SIGTERM); the exit code.

    With no ``--port``, :data:`DEFAULT_PORT` (a stable, bookmarkable address), or any free port when
    another process has it; a port given explicitly is used or the command fails.
    """
    from runapi_mcp.tasks.sqlite_store import StoreError

    try:
        anyio.run(_serve_until_stopped, settings, host, DEFAULT_PORT if port is None else port, port is None)
    except (ConfigError, StoreError) as exc:
        print(f"runapi-mcp gallery: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


async def _serve_until_stopped(settings: Settings, host: str, port: int, fallback: bool) -> None:
    from runapi_mcp.http.gallery import serving_gallery  # the HTTP stack, only for this command

    async with serving_gallery(settings, host, port, fallback=fallback) as running:
        print(f"runapi-mcp gallery: serving {settings.images_dir} at {running.url} (Ctrl-C to stop)", file=sys.stderr)
        print(running.url, flush=True)  # one line on stdout, for scripts
        await running.stopped.wait()
    print("runapi-mcp gallery: stopped", file=sys.stderr)
