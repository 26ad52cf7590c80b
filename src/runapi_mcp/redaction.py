"""The one redaction every outward-bound string passes: results, errors, log lines and files.

RunAPI (or a proxy in front of it) may echo the API key back anywhere: in an error message, a request-id
header, an image URL's query string, a task id. Redacting at each place a string is *used* would need every
future place to remember; instead the client redacts every string it *receives* (see ``client._text``), and
the MCP layer, the log filter and the library pass what they emit through the same :class:`Redactor` once
more. A secret is matched in the forms an echo takes in practice: verbatim, percent-encoded (a URL; every
byte or some), and base64 (a ``Basic`` header or a token wrapped by a proxy).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "Redactor", "database_password", "redact_url"]

MASK = "***"
# Anything shaped like a bearer credential, whoever's it is: never worth showing.
_BEARER = re.compile(r"(?i)\bbearer\s+[^\s\"',;]+")
# Shorter secrets would mask ordinary words; such a key is refused elsewhere as unusable anyway.
_MIN_SECRET = 4


def _forms(secret: str) -> set[str]:
    raw = secret.encode("utf-8", "surrogatepass")
    every_byte = "".join(f"%{byte:02X}" for byte in raw)  # quote() leaves URL-safe keys as they are
    forms = {secret, quote(secret, safe=""), quote_plus(secret), every_byte, every_byte.lower()}
    for text in (raw, b"Bearer " + raw):
        encoded = base64.b64encode(text).decode("ascii")
        forms.update({encoded, encoded.rstrip("="), base64.urlsafe_b64encode(text).decode("ascii").rstrip("=")})
    return {form for form in forms if len(form) >= _MIN_SECRET}


class Redactor:
    """Replaces each secret (in every form above), and any ``Bearer <token>``, with ``***``."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets = [secret for secret in secrets if secret and len(secret) >= _MIN_SECRET]
        forms: set[str] = set()
        for secret in self._secrets:
            forms |= _forms(secret)
        # Longest first, so a form that contains another is cut whole.
        self._forms = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = self._cut(text)
        # A key percent-encoded in part (some bytes escaped, some not) matches no fixed form: such a
        # text is decoded once and cut again. It changes only texts that carried the key.
        if "%" in text and self._secrets:
            decoded = unquote(text)
            if any(secret in decoded for secret in self._secrets):
                text = self._cut(decoded)
        return _BEARER.sub(f"Bearer {MASK}", text)

    def _cut(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def data(self, value: Any) -> Any:
        """``value`` (JSON-like: dicts, lists, strings) with every string, keys included, redacted."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {self(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value

    def __repr__(self) -> str:
        return f"Redactor({len(self._forms)} forms)"


def database_password(url: str | None) -> str | None:
    """The password a database URL carries (in its user part or a ``password`` parameter), decoded; None
    when it has none."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        found = unquote(parts.password) if parts.password else dict(parse_qsl(parts.query)).get("password")
    except ValueError:
        return None
    return found or None


def redact_url(url: str) -> str:
    """A database URL as it may be shown: its password (user part or ``password`` parameter) as ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:{MASK}@{host}"
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = urlencode([(k, MASK if k == "password" else v) for k, v in pairs], safe="*") if pairs else parts.query
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "the database URL (not shown: it could not be read to hide its password)"
