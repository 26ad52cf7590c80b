"""Settings: environment first, then ``~/.config/runapi/config.json``, then defaults.

Each setting is also a CLI flag (see ``commands/options.py``); a flag wins over the environment.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from runapi_mcp.redaction import Redactor, database_password, redact_url

DEFAULT_BASE_URL = "https://runapi.ai"  # RunAPI itself (the client's default too)
DEFAULT_WAIT_S = 50.0
RUNAPI_CONFIG_FILE = Path("~/.config/runapi/config.json")
CALLBACK_PATH = "/callbacks/runapi"
"""Where ``http.webhook`` serves RunAPI's completion callbacks; ``Settings.callback_base`` is the public URL + this."""


# How an on/off setting may be written (pydantic's own bool parsing would also take "t" or "y").
_ON = ("on", "true", "yes", "1")
_OFF = ("off", "false", "no", "0")


class ConfigError(ValueError):
    """A setting has a value the server cannot use; the message names the setting."""


class Settings(BaseModel):
    """Everything the server needs to know, validated once at start."""

    model_config = ConfigDict(frozen=True)

    # A setting with an ``env`` entry is also that environment variable and the flag named after the field
    # (``wait_s`` -> ``--wait-s``): declared here once, read by ``load_settings`` and ``commands.options``.
    api_key: SecretStr | None = Field(
        None, description="RunAPI key (prefer the environment)", json_schema_extra={"env": "RUNAPI_API_KEY"}
    )
    base_url: str = Field(DEFAULT_BASE_URL, description="RunAPI base URL", json_schema_extra={"env": "RUNAPI_BASE_URL"})
    home: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("runapi-mcp", appauthor=False)),
        description="Image library and state directory",
        json_schema_extra={"env": "RUNAPI_MCP_HOME"},
    )
    allowed_dirs: tuple[Path, ...] = Field(
        default_factory=lambda: (Path.home(),),
        description=f"'{os.pathsep}'-separated directories local images may be read from",
        json_schema_extra={"env": "RUNAPI_MCP_ALLOWED_DIRS"},
    )
    wait_s: float = Field(
        DEFAULT_WAIT_S, description="Longest tool wait in seconds", json_schema_extra={"env": "RUNAPI_MCP_WAIT_S"}
    )
    log_level: str = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR", json_schema_extra={"env": "RUNAPI_MCP_LOG_LEVEL"}
    )
    max_spend_cents: int | None = Field(
        None,
        description="Most cents this server may spend per UTC day, by RunAPI's quotes (unset: no cap)",
        json_schema_extra={"env": "RUNAPI_MCP_MAX_SPEND_CENTS"},
    )
    confirm_above_cents: int | None = Field(
        None,
        description="Ask the user (elicitation) before a task quoted above this many cents (unset: never ask)",
        json_schema_extra={"env": "RUNAPI_MCP_CONFIRM_ABOVE_CENTS"},
    )
    resource_links: bool = Field(
        True,
        description="on: each saved image also comes as a resource_link block in tool results; off: left out "
        "(the text still names its runapi:// URI and file path)",
        json_schema_extra={"env": "RUNAPI_MCP_RESOURCE_LINKS"},
    )
    # -- shared deployments (HTTP transports) ------------------------------------------------------
    database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL task store several instances share, postgresql://user:password@host:5432/database "
        "(prefer the environment; unset: SQLite in RUNAPI_MCP_HOME)",
        json_schema_extra={"env": "RUNAPI_MCP_DATABASE_URL"},
    )
    lease_ttl_s: float = Field(
        10.0,
        ge=1,
        le=600,
        description="With RUNAPI_MCP_DATABASE_URL: how long an instance's claim on the tasks it polls lasts unless "
        "renewed (every third of it); the tasks of an instance that stops pass to another after about this long",
        json_schema_extra={"env": "RUNAPI_MCP_LEASE_TTL_S"},
    )
    auth_token: SecretStr | None = Field(
        None,
        description="Bearer token every HTTP request must carry (one shared user)",
        json_schema_extra={"env": "RUNAPI_MCP_AUTH_TOKEN"},
    )
    jwt_issuer: str | None = Field(
        None,
        description="OAuth 2.1 issuer whose JWT access tokens are accepted (per-user tokens)",
        json_schema_extra={"env": "RUNAPI_MCP_JWT_ISSUER"},
    )
    jwt_audience: str | None = Field(
        None,
        description="Audience the JWT access tokens must carry (default: the public URL's /mcp)",
        json_schema_extra={"env": "RUNAPI_MCP_JWT_AUDIENCE"},
    )
    jwt_jwks_url: str | None = Field(
        None,
        description="Where the issuer's signing keys are (default: its OpenID/OAuth metadata's jwks_uri)",
        json_schema_extra={"env": "RUNAPI_MCP_JWT_JWKS_URL"},
    )
    public_url: str | None = Field(
        None,
        description="This server's URL as RunAPI and clients reach it (enables completion webhooks)",
        json_schema_extra={"env": "RUNAPI_MCP_PUBLIC_URL"},
    )
    user_spend_cents: str | None = Field(
        None,
        description="Per-user daily caps with per-user tokens, e.g. 'alice=500,bob=200' (others: the server's cap)",
        json_schema_extra={"env": "RUNAPI_MCP_USER_SPEND_CENTS"},
    )
    schedules_max_age_s: float = Field(
        300.0,
        ge=0,
        le=86400,
        description="Re-read RunAPI's model availability (price schedules) when older than this many seconds",
        json_schema_extra={"env": "RUNAPI_MCP_SCHEDULES_MAX_AGE_S"},
    )
    # -- HTTP limits (http/limits.py, http/sessions.py): what one user or one connection may hold ------
    max_sessions_per_user: int = Field(
        20,
        ge=1,
        le=100_000,
        description="HTTP: most open MCP sessions per user (at the cap, the user's least recently used idle one "
        "is closed; with none idle, the new one is refused)",
        json_schema_extra={"env": "RUNAPI_MCP_MAX_SESSIONS_PER_USER"},
    )
    session_idle_s: float = Field(
        300.0,
        ge=1,
        le=86400,
        description="HTTP: close a streamable-HTTP session after this many seconds with no request in flight",
        json_schema_extra={"env": "RUNAPI_MCP_SESSION_IDLE_S"},
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="HTTP: close a connection whose request headers are not complete within this many seconds",
        json_schema_extra={"env": "RUNAPI_MCP_HEADER_TIMEOUT_S"},
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="HTTP: close a connection whose request body is not complete this many seconds after its headers",
        json_schema_extra={"env": "RUNAPI_MCP_BODY_TIMEOUT_S"},
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        description="HTTP: most open connections (default: the open-file limit less a reserve)",
        json_schema_extra={"env": "RUNAPI_MCP_MAX_CONNECTIONS"},
    )
    body_budget_bytes: int = Field(
        64 * 1024 * 1024,
        ge=64 * 1024,
        description="HTTP: most bytes of request bodies in flight in the process (over it: 503 with Retry-After)",
        json_schema_extra={"env": "RUNAPI_MCP_BODY_BUDGET_BYTES"},
    )
    user_body_budget_bytes: int = Field(
        16 * 1024 * 1024,
        ge=64 * 1024,
        description="HTTP: most bytes of request bodies in flight per user (over it: 503 with Retry-After)",
        json_schema_extra={"env": "RUNAPI_MCP_USER_BODY_BUDGET_BYTES"},
    )
    max_input_bytes: int = 20 * 1024 * 1024
    max_output_bytes: int = 200 * 1024 * 1024
    max_concurrent_requests: int = 8
    max_concurrent_downloads: int = 16

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"RUNAPI_BASE_URL must start with http:// or https://, got {value!r}")
        return value

    @field_validator("wait_s")
    @classmethod
    def _check_wait(cls, value: float) -> float:
        if not 0 <= value <= 3600:
            raise ValueError(f"RUNAPI_MCP_WAIT_S must be between 0 and 3600 seconds, got {value}")
        return value

    @field_validator("max_spend_cents", "confirm_above_cents", mode="before")
    @classmethod
    def _check_spend_cap(cls, value: object) -> object:
        # Text from the environment or a flag: whole cents only ("5.5" or "-1" is a typo, not a cap).
        if isinstance(value, str):
            try:
                return _cents(value)
            except ValueError:
                raise ValueError(f"must be a whole number of cents, 0 or more, got {value.strip()[:40]!r}") from None
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"must be a whole number of cents, 0 or more, got {value}")
        return value

    @field_validator("resource_links", mode="before")
    @classmethod
    def _check_switch(cls, value: object) -> object:
        # Text from the environment or a flag: on or off (and the usual spellings of each), nothing else.
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _ON:
                return True
            if word in _OFF:
                return False
            raise ValueError(f"must be on or off, got {value.strip()[:40]!r}")
        return value

    @field_validator("public_url", "jwt_issuer", "jwt_jwks_url")
    @classmethod
    def _check_http_url(cls, value: str | None, info: Any) -> str | None:
        if value is None or not value.strip():
            return None
        # An issuer is compared as an exact string (RFC 8414): "https://tenant.auth0.com/" keeps its slash.
        value = value.strip() if info.field_name == "jwt_issuer" else value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query:
            raise ValueError(f"must be an http(s) URL with a host and no query, got {value[:200]!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        url = value.get_secret_value().strip()
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if scheme not in ("postgresql", "postgres"):
            # Never the value itself: it may carry a password.
            shown = f"a {scheme}:// URL" if scheme else "no URL"
            raise ValueError(
                f"must be a PostgreSQL URL, postgresql://user:password@host:5432/database (or postgres://), got {shown}"
            )
        return SecretStr(url)

    @field_validator("user_spend_cents")
    @classmethod
    def _check_user_caps(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_user_caps(value)
        return value

    @property
    def user_caps(self) -> dict[str, int]:
        """Per-user daily spending caps in cents, by the user's token subject."""
        return _parse_user_caps(self.user_spend_cents or "")

    @field_validator("home")
    @classmethod
    def _resolve_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("allowed_dirs")
    @classmethod
    def _resolve_dirs(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        return tuple(Path(p).expanduser().resolve() for p in value)

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def store_file(self) -> Path:
        """The task store: every task this server created, across restarts."""
        return self.home / "tasks.sqlite3"

    @property
    def database(self) -> str | None:
        """The PostgreSQL URL of the task store (None: SQLite in :attr:`store_file`)."""
        return self.database_url.get_secret_value() if self.database_url else None

    @property
    def store_location(self) -> str:
        """Where the tasks are, as it may be shown: the file, or the database URL without its password."""
        if self.database is None:
            return str(self.store_file)
        return redact_url(self.database)

    @property
    def callback_base(self) -> str | None:
        """Where RunAPI reaches this server's completion callbacks (None without a public URL: polling only)."""
        return f"{self.public_url}{CALLBACK_PATH}" if self.public_url else None

    @property
    def remembers_durations(self) -> bool:
        """Whether what the poll schedule learned about task durations is kept in the store.

        Not for an upstream on this machine: a simulator or test stand-in, whose timings change from
        run to run and must not shape the next run's polls (nor a later run against RunAPI's).
        """
        return not is_loopback_host(urlsplit(self.base_url).hostname or "")

    @property
    def legacy_durations_file(self) -> Path:
        """Where versions before the task store kept learned durations (taken over once)."""
        return self.home / "durations.json"

    def key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None

    @cached_property
    def redactor(self) -> Redactor:
        """The process's one redaction (the API key in every form it may be echoed in)."""
        token = self.auth_token.get_secret_value() if self.auth_token else None
        return Redactor([self.key(), token, database_password(self.database)])

    def redact(self, text: str) -> str:
        """``text`` with the API key cut out, for anything that may reach a user or a log."""
        return self.redactor(text)


@dataclass(frozen=True)
class EnvSetting:
    """A setting that is also an environment variable and a CLI flag."""

    name: str
    variable: str
    description: str
    number: bool  # parsed as a float (else kept as text until Settings validates it)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def settings_from_environment() -> dict[str, EnvSetting]:
    """Each setting declared with an ``env`` entry on :class:`Settings`, by field name."""
    out: dict[str, EnvSetting] = {}
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and isinstance(extra.get("env"), str):
            out[name] = EnvSetting(name, str(extra["env"]), info.description or "", info.annotation is float)
    return out


_ENV = {name: setting.variable for name, setting in settings_from_environment().items()}


# RunAPI's config file holds a key and a URL: a few hundred bytes.
_RUNAPI_CONFIG_MAX_BYTES = 1024 * 1024


def _read_runapi_config(path: Path) -> dict[str, Any]:
    """RunAPI's own tools keep ``apiKey``/``baseUrl`` here; a missing or broken file is no error.

    Only a regular file of a sane size is read: a FIFO would hang every command that loads the settings,
    and ``/dev/zero`` would fill the memory."""
    try:
        with open(path.expanduser(), "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > _RUNAPI_CONFIG_MAX_BYTES:
                return {}
            raw = json.loads(file.read(_RUNAPI_CONFIG_MAX_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    out: dict[str, Any] = {}
    for ours, names in (("api_key", ("apiKey", "api_key")), ("base_url", ("baseUrl", "base_url"))):
        for name in names:
            if isinstance(raw.get(name), str) and raw[name].strip():
                out[ours] = raw[name].strip()
                break
    return out


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path = RUNAPI_CONFIG_FILE,
) -> Settings:
    """Build :class:`Settings` from flags (``overrides``), the environment and RunAPI's config file.

    Raises :class:`ConfigError` naming the setting when a value is unusable.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    file_values = _read_runapi_config(config_file)
    for name, var in _ENV.items():
        raw = env.get(var, "").strip()
        if raw:
            values[name] = raw
        elif name in file_values:
            values[name] = file_values[name]
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    if isinstance(values.get("allowed_dirs"), str):
        values["allowed_dirs"] = tuple(p for p in values["allowed_dirs"].split(os.pathsep) if p.strip())
    if isinstance(values.get("wait_s"), str):
        try:
            values["wait_s"] = float(values["wait_s"])
        except ValueError:
            raise ConfigError(f"RUNAPI_MCP_WAIT_S must be a number of seconds, got {values['wait_s']!r}") from None
    level = str(values.get("log_level", "INFO")).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"RUNAPI_MCP_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, got {level!r}")
    values["log_level"] = level
    try:
        return Settings(**values)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        if callable(errors):
            parts = []
            for err in errors():
                loc = ".".join(str(x) for x in err.get("loc", ())) or "settings"
                parts.append(f"{_ENV.get(loc, loc)}: {err.get('msg', '')}".replace("Value error, ", ""))
            raise ConfigError("; ".join(parts)) from None
        raise ConfigError(str(exc)) from None


def _parse_user_caps(text: str) -> dict[str, int]:
    caps: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        user, eq, cents = item.rpartition("=")
        try:
            if not eq or not user.strip():
                raise ValueError(item)
            caps[user.strip()] = _cents(cents)
        except ValueError:
            raise ValueError(f"each entry must be user=cents (whole cents, 0 or more), got {item[:80]!r}") from None
    return caps


def _cents(text: str) -> int:
    """A whole number of cents written as text (0 or more, at most 15 digits; surrounding blanks ignored).

    ValueError for anything else: "5.5" or "-1" is a typo, not an amount. The one rule for the server's
    caps and the per-user ones; each caller words its own error.
    """
    text = text.strip()
    if not re.fullmatch(r"[0-9]{1,15}", text):
        raise ValueError(f"not a whole number of cents: {text[:40]!r}")
    return int(text)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name, an IP address, or an IPv6 address in brackets) is this machine's loopback."""
    if host in ("localhost", "::1") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
