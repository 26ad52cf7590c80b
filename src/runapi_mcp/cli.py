"""``runapi-mcp``: serve MCP (stdio by default, or HTTP); also simulate, demo, tasks, gallery, install, doctor."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from runapi_mcp import __version__
from runapi_mcp.config import ConfigError, load_settings, settings_from_environment
from runapi_mcp.history_cli import STATES


def _add_settings_flags(parser: argparse.ArgumentParser, *, sub: bool = False) -> None:
    # A subcommand's copy must not overwrite a flag given before the subcommand with None.
    group = parser.add_argument_group("settings (each also an environment variable)")
    if sub:
        group.argument_default = argparse.SUPPRESS
    for name, setting in settings_from_environment().items():
        kind = float if setting.number else str
        group.add_argument(setting.flag, dest=name, type=kind, help=f"{setting.description} ({setting.variable})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runapi-mcp", description="MCP server for RunAPI image models (GPT Image 2 and friends)."
    )
    parser.add_argument("--version", action="version", version=f"runapi-mcp {__version__}")
    _add_settings_flags(parser)
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="Serve MCP over stdio (the default command) or HTTP")
    serve.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="stdio",
        help="stdio (default; one client), streamable-http (/mcp), sse (/sse, legacy clients), "
        "or http (both /mcp and /sse in one process)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="HTTP: address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="HTTP: port (default 8000; 0 for any free port)")
    _add_settings_flags(serve, sub=True)

    sim = sub.add_parser("simulate", help="Run the RunAPI simulator (offline stand-in for RunAPI) on loopback")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--api-key", dest="sim_key", default=None, help="Key the simulator accepts (default: any)")
    sim.add_argument("--time-scale", type=float, default=1.0, help="Multiply task durations (e.g. 0.1)")

    demo = sub.add_parser("demo", help="Offline demo: simulator + server + MCP client, generates one image")
    demo.add_argument("prompt", nargs="?", default=None, help="What to draw")
    demo.add_argument("--home", dest="home", help="Where to save the image (RUNAPI_MCP_HOME)")
    demo.add_argument("--aspect-ratio", default="16:9")
    demo.add_argument("--output-resolution", default="1k")

    tasks = sub.add_parser("tasks", help="Print the task history, newest first, from the server's task store")
    tasks.add_argument("--status", choices=STATES, help="Only tasks in this state")
    tasks.add_argument("--limit", type=_positive_int, default=20, help="How many tasks (default 20)")
    _add_settings_flags(tasks, sub=True)

    gallery = sub.add_parser("gallery", help="Browse the image library in a web browser (served on loopback)")
    gallery.add_argument("--host", default="127.0.0.1", help="A loopback address to bind (default 127.0.0.1)")
    gallery.add_argument("--port", type=_port, default=None, help="Port (default 8766, or any free one if taken)")
    _add_settings_flags(gallery, sub=True)

    from runapi_mcp import doctor as doctor_cmd
    from runapi_mcp import install as install_cmd

    setup = sub.add_parser("install", help="Add this server to an MCP client's config (backs the file up first)")
    install_cmd.add_arguments(setup)
    doctor = sub.add_parser("doctor", help="Check the setup (key, RunAPI, home, client configs) and say what to fix")
    doctor_cmd.add_arguments(doctor)
    _add_settings_flags(doctor, sub=True)
    return parser


TRANSPORTS = ("stdio", "streamable-http", "sse", "http")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = settings_from_environment()
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "serve"
    if command == "simulate":
        from runapi_mcp.simulator import SimulatorConfig, serve

        serve(args.host, args.port, SimulatorConfig(api_key=args.sim_key, time_scale=args.time_scale))
        return 0
    if command == "install":
        from runapi_mcp.install import run as run_install

        return run_install(args)
    if command == "doctor":  # before load_settings: a bad setting is one of the things it reports
        from runapi_mcp.doctor import run as run_doctor

        return run_doctor(args, _settings_overrides(args))
    if command == "demo":
        from runapi_mcp.demo import run_demo

        home = os.path.abspath(args.home) if args.home else None
        return anyio.run(run_demo, args.prompt, home, args.aspect_ratio, args.output_resolution)
    try:
        settings = load_settings(_settings_overrides(args))
    except ConfigError as exc:
        print(f"runapi-mcp: bad configuration: {exc}", file=sys.stderr)
        return 2
    from runapi_mcp.app import configure_logging, serve_stdio

    configure_logging(settings)
    if command == "tasks":
        from runapi_mcp.history_cli import print_history

        return anyio.run(print_history, settings, args.status, args.limit)
    if command == "gallery":
        from runapi_mcp.http.gallery import run_gallery

        return run_gallery(settings, args.host, args.port)
    transport = getattr(args, "transport", "stdio")
    if transport == "stdio":
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(serve_stdio, settings)
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
