"""What several commands share: the settings flags, argument types, and loading the settings."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from runapi_mcp.config import ConfigError, Settings, load_settings, settings_from_environment


def add_settings_flags(parser: argparse.ArgumentParser, *, sub: bool = False) -> None:
    """One flag per setting (each also an environment variable), on the top-level parser and (``sub``) on
    each subcommand that reads the settings."""
    # A subcommand's copy must not overwrite a flag given before the subcommand with None.
    group = parser.add_argument_group("settings (each also an environment variable)")
    if sub:
        group.argument_default = argparse.SUPPRESS
    for name, setting in settings_from_environment().items():
        kind = float if setting.number else str
        group.add_argument(setting.flag, dest=name, type=kind, help=f"{setting.description} ({setting.variable})")


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (before or after the subcommand)."""
    names = settings_from_environment()
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def configured(args: argparse.Namespace) -> Settings | None:
    """The settings from the flags, the environment and RunAPI's config file, with logging set up (to stderr,
    redacted); None once a bad setting has been reported (the command then exits with 2)."""
    try:
        settings = load_settings(settings_overrides(args))
    except ConfigError as exc:
        print(f"runapi-mcp: bad configuration: {exc}", file=sys.stderr)
        return None
    from runapi_mcp.app import configure_logging  # the server's wiring, only when a command runs

    configure_logging(settings)
    return settings


def run_configured(args: argparse.Namespace, body: Callable[[Settings], int]) -> int:
    """``body`` run with the settings ``args`` make (:func:`configured`); 2 after saying why on a bad setting,
    or when the task store cannot be used (e.g. no database at RUNAPI_MCP_DATABASE_URL: one line, without its
    password, not a traceback)."""
    settings = configured(args)
    if settings is None:
        return 2
    from runapi_mcp.tasks.store import StoreError

    try:
        return body(settings)
    except StoreError as exc:
        print(f"runapi-mcp: {settings.redact(str(exc))}", file=sys.stderr)
        return 2


def port(text: str) -> int:
    """An argument type: a TCP port (0: any free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535")
    return value


def positive_int(text: str) -> int:
    """An argument type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
