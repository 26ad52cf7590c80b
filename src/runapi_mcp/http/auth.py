"""Bearer-token verification for the HTTP transports: one shared token, per-user JWTs, or both.

:class:`BearerVerifier` is the mcp SDK's ``TokenVerifier``: the SDK's auth middleware hands it the token
from each request's ``Authorization: Bearer`` header and refuses the request when it answers ``None``.

- A shared token (``RUNAPI_MCP_AUTH_TOKEN``) makes everyone who holds it one user, the local owner.
- JWT access tokens from an OAuth 2.1 issuer (``RUNAPI_MCP_JWT_ISSUER``) make each token subject its own
  user: tasks are stamped with the subject (:func:`owner_of`) and each user sees only their own.

The issuer's signing keys (its JWKS) are fetched over HTTP, cached, and refetched when a token names a
key not yet seen (rotation), no more often than every 30 s, so a stream of forged key ids cannot turn
this server into a load generator against the issuer.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import jwt
from mcp.server.auth.provider import AccessToken

from runapi_mcp.catalog import is_http_url
from runapi_mcp.clock import SYSTEM_CLOCK, Clock
from runapi_mcp.config import ConfigError, Settings
from runapi_mcp.tasks import LOCAL_OWNER

__all__ = ["SHARED_TOKEN_CLIENT_ID", "BearerVerifier", "JWTSettings", "build_verifier", "owner_of"]

log = logging.getLogger("runapi_mcp.http.auth")

SHARED_TOKEN_CLIENT_ID = "shared-token"
# Real access tokens are a few hundred bytes to a few KB; anything longer is refused before any
# base64 or JSON work is spent on it.
MAX_TOKEN_CHARS = 8 * 1024
FETCH_TIMEOUT_S = 10.0
MAX_DOCUMENT_BYTES = 1024 * 1024  # a JWKS or metadata document; real ones are a few KB
KEYS_TTL_S = 600.0
# The least time between two fetches of the key set when a token names an unknown key (rotation).
REFETCH_MIN_S = 30.0
# After a failed fetch, requests fail at once for this long (counted from the fetch's end, timeouts
# included) instead of each trying the issuer again.
FAILURE_BACKOFF_S = 5.0

# What each signing algorithm needs of a key: its JWK key type and, where it matters, its curve.
# Nothing symmetric (HS*) and no "none": an HMAC "verified" with a public key is the classic
# algorithm-confusion forgery, since the public key is public.
_KEY_FOR_ALG: dict[str, tuple[str, frozenset[str] | None]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "ES256K": ("EC", frozenset({"secp256k1"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
# The algorithm a JWK without its own "alg" is parsed with (PyJWK needs one; the key is the same).
_PARSE_ALG = {("EC", "P-256"): "ES256", ("EC", "P-384"): "ES384", ("EC", "P-521"): "ES512"}
_PARSE_ALG_BY_KTY = {"RSA": "RS256", "OKP": "EdDSA"}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


@dataclass(frozen=True)
class JWTSettings:
    """Which JWT access tokens are accepted: whose (issuer), for whom (audience), signed how."""

    issuer: str
    audience: str
    jwks_url: str | None = None  # None: the jwks_uri of the issuer's OAuth or OpenID metadata
    # Clock skew allowed on exp, nbf and iat: a token is accepted until exp + leeway (its AccessToken's
    # expires_at, which the SDK's auth middleware and the gallery check again, says that time).
    leeway_s: float = 30.0
    algorithms: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")

    def __post_init__(self) -> None:
        if not self.issuer:
            raise ValueError("the JWT issuer must not be empty")
        if not self.audience:
            raise ValueError("the JWT audience must not be empty")
        if not (math.isfinite(self.leeway_s) and 0 <= self.leeway_s <= 600):
            raise ValueError(f"the JWT leeway must be between 0 and 600 seconds, got {self.leeway_s}")
        if not self.algorithms:
            raise ValueError("at least one JWT algorithm must be allowed")
        refused = [alg for alg in self.algorithms if alg not in _KEY_FOR_ALG]
        if refused:
            raise ValueError(
                f"JWT algorithms {refused} are not allowed (only public-key signatures: {sorted(_KEY_FOR_ALG)})"
            )


@dataclass(frozen=True)
class _Key:
    """One usable signing key of the issuer's key set."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own "alg": when present, the only algorithm the key may verify
    key: Any  # a cryptography public key object

    def fits(self, alg: str) -> bool:
        kty, curves = _KEY_FOR_ALG[alg]
        return self.kty == kty and (curves is None or self.crv in curves) and (self.alg is None or self.alg == alg)


@dataclass(frozen=True)
class _KeySet:
    keys: tuple[_Key, ...]
    fetched_at: float

    def find(self, kid: str | None, alg: str) -> _Key | None:
        if kid is not None:
            return next((k for k in self.keys if k.kid == kid and k.fits(alg)), None)
        # No kid: only an unambiguous key will do (trying each in turn would let a token pick its key).
        fitting = [k for k in self.keys if k.fits(alg)]
        return fitting[0] if len(fitting) == 1 else None


class _FetchError(Exception):
    """The issuer's metadata or key set could not be had; the message says why (no secrets in it)."""


class _Refused(Exception):
    """A token fails a check; the message is the reason, for the DEBUG log."""


class BearerVerifier:
    """The mcp SDK ``TokenVerifier`` for this server: a shared token, JWTs from one issuer, or both.

    ``verify_token`` never raises: anything wrong with a token, or with reaching the issuer, is ``None``
    (the request is refused), with the reason logged at DEBUG (the issuer being unreachable at WARNING).
    """

    def __init__(
        self,
        *,
        static_token: str | None = None,
        jwt: JWTSettings | None = None,
        http: httpx.AsyncClient | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if static_token is None and jwt is None:
            raise ValueError("a BearerVerifier needs a static token, JWT settings, or both")
        if static_token is not None and not static_token:
            raise ValueError("the static bearer token must not be empty")
        self._static = static_token.encode("utf-8", "surrogatepass") if static_token is not None else None
        self._jwt = jwt
        self._owns_http = http is None and jwt is not None
        self._http = http if http is not None or jwt is None else httpx.AsyncClient(follow_redirects=False)
        self._clock = clock
        self._lock = anyio.Lock()
        self._keys: _KeySet | None = None
        self._jwks_uri: str | None = jwt.jwks_url if jwt is not None else None
        self._fetches = 0  # fetches finished so far: a waiter seeing it move shares that fetch's outcome
        self._last_fetch_at: float | None = None
        self._failing = False  # the last fetch failed (the WARNING is logged once per such streak)

    async def aclose(self) -> None:
        """Close the HTTP client this verifier made (one passed in belongs to the caller)."""
        if self._owns_http and self._http is not None:
            await self._http.aclose()

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            return await self._verify(token)
        except _Refused as exc:
            log.debug("bearer token refused: %s", exc)
            return None
        except Exception:
            # Not expected (every known failure is a _Refused), but an exception here would become a
            # 500 for every request: refuse this one token and keep serving.
            log.exception("bearer token refused: unexpected error while verifying it")
            return None

    async def _verify(self, token: str) -> AccessToken:
        if not token:
            raise _Refused("empty token")
        if len(token) > MAX_TOKEN_CHARS:
            raise _Refused(f"token longer than {MAX_TOKEN_CHARS} characters")
        # Constant time, so response timing does not reveal how much of a guess was right.
        if self._static is not None and hmac.compare_digest(token.encode("utf-8", "surrogatepass"), self._static):
            return AccessToken(token=token, client_id=SHARED_TOKEN_CLIENT_ID, scopes=[], subject=None)
        if self._jwt is None:
            raise _Refused("not the shared token")
        return await self._verify_jwt(token, self._jwt)

    async def _verify_jwt(self, token: str, settings: JWTSettings) -> AccessToken:
        if not token.isascii():
            # A JWT is base64url and dots; PyJWT would fail on a lone surrogate with UnicodeEncodeError.
            raise _Refused("not a JWT (non-ASCII characters)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _Refused(f"not a JWT ({type(exc).__name__}: {exc})") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in settings.algorithms:
            raise _Refused(f"algorithm {str(alg)[:20]!r} is not allowed")
        if kid is not None and not isinstance(kid, str):
            raise _Refused("kid is not a string")
        keys = await self._key_set(refresh=False)
        key = keys.find(kid, alg) if keys is not None else None
        if key is None and keys is not None:
            # A key not seen yet: the issuer may have rotated. (A fetch refused by the rate limit or
            # failed leaves the current set in place.)
            keys = await self._key_set(refresh=True)
            key = keys.find(kid, alg) if keys is not None else None
        if keys is None:
            raise _Refused("the issuer's signing keys are unavailable")
        if key is None:
            shown = "no kid" if kid is None else f"kid {kid[:64]!r}"
            raise _Refused(f"no {alg} signing key for {shown} in the issuer's key set")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"], "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as exc:
            raise _Refused(f"{type(exc).__name__}: {exc}") from None
        return _access_token(token, claims, settings)

    async def _key_set(self, *, refresh: bool) -> _KeySet | None:
        """The issuer's key set: the cached one while fresh, else (or on ``refresh``) fetched again.

        ``None`` when there is no fresh set and none can be had now.
        """
        current = self._fresh_keys()
        if current is not None and not refresh:
            return current
        seen = self._fetches
        async with self._lock:
            if self._fetches != seen:
                # Another verification fetched while this one waited: share its outcome.
                return self._fresh_keys()
            if self._last_fetch_at is not None:
                since = self._clock.monotonic() - self._last_fetch_at
                if self._failing and since < FAILURE_BACKOFF_S:
                    return self._fresh_keys()
                if refresh and since < REFETCH_MIN_S:
                    return self._fresh_keys()
            try:
                keys = await self._fetch_keys_in_time()
            except _FetchError as exc:
                # The backoff counts from here, the fetch's end: an issuer that hangs until the timeout
                # (longer than the backoff) must not have every request wait for a fetch of its own.
                self._last_fetch_at = self._clock.monotonic()
                self._fetches += 1
                if self._jwt is not None and self._jwt.jwks_url is None:
                    self._jwks_uri = None  # discover again next time: the issuer may have moved its keys
                if not self._failing:
                    log.warning("JWT signing keys unavailable, bearer tokens refused until they are: %s", exc)
                else:
                    log.debug("JWT signing keys still unavailable: %s", exc)
                self._failing = True
                return self._fresh_keys()
            # Counted once the fetch has an outcome: if it is cancelled, a waiter fetches in its stead.
            self._last_fetch_at = self._clock.monotonic()
            self._fetches += 1
            if self._failing:
                log.info("JWT signing keys available again (%d keys)", len(keys))
            self._failing = False
            self._keys = _KeySet(keys, self._clock.monotonic())
            return self._keys

    def _fresh_keys(self) -> _KeySet | None:
        keys = self._keys
        if keys is None or self._clock.monotonic() - keys.fetched_at >= KEYS_TTL_S:
            return None
        return keys

    async def _fetch_keys_in_time(self) -> tuple[_Key, ...]:
        """:meth:`_fetch_keys` within :data:`FETCH_TIMEOUT_S` in all (discovery's two metadata documents
        and the key set together), so a hanging issuer holds a verification that long at most."""
        try:
            with anyio.fail_after(FETCH_TIMEOUT_S):
                return await self._fetch_keys()
        except TimeoutError:
            raise _FetchError(f"the issuer's signing keys did not arrive within {FETCH_TIMEOUT_S:g} s") from None

    async def _fetch_keys(self) -> tuple[_Key, ...]:
        if self._jwks_uri is None:
            self._jwks_uri = await self._discover_jwks_uri()
        document = await self._get_json(self._jwks_uri)
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise _FetchError(f"{self._jwks_uri} is not a JWKS (no 'keys' list)")
        keys: list[_Key] = []
        # A real key set has a handful of keys; parsing is bounded whatever the issuer serves.
        for index, entry in enumerate(entries[:256]):
            key = self._parse_key(entry, index)
            if key is not None:
                keys.append(key)
        log.debug("fetched %d usable JWT signing keys of %d from %s", len(keys), len(entries), self._jwks_uri)
        return tuple(keys)

    def _parse_key(self, entry: object, index: int) -> _Key | None:
        """One JWKS entry as a usable public signing key, or ``None`` (logged) when it is not one."""
        assert self._jwt is not None
        if not isinstance(entry, dict):
            log.debug("JWKS key %d skipped: not an object", index)
            return None
        kty, crv, alg, kid = entry.get("kty"), entry.get("crv"), entry.get("alg"), entry.get("kid")
        use, ops = entry.get("use"), entry.get("key_ops")
        if not isinstance(kty, str) or kty == "oct":
            log.debug("JWKS key %d skipped: key type %r is not a public-key type", index, str(kty)[:20])
            return None
        if not _PRIVATE_MEMBERS.isdisjoint(entry):
            # A published private key can sign anything: whoever reads the JWKS could forge tokens.
            log.warning("JWKS key %d skipped: it carries private key material", index)
            return None
        if (use is not None and use != "sig") or (isinstance(ops, list) and "verify" not in ops):
            log.debug("JWKS key %d skipped: not a signature key", index)
            return None
        if kid is not None and not isinstance(kid, str):
            log.debug("JWKS key %d skipped: kid is not a string", index)
            return None
        if alg is not None and (not isinstance(alg, str) or alg not in self._jwt.algorithms):
            log.debug("JWKS key %d skipped: its algorithm %r is not allowed", index, str(alg)[:20])
            return None
        crv = crv if isinstance(crv, str) else None
        parse_alg = alg or _PARSE_ALG.get((kty, crv or "")) or _PARSE_ALG_BY_KTY.get(kty)
        if parse_alg is None:
            log.debug("JWKS key %d skipped: unsupported key type %r / curve %r", index, kty[:20], str(crv)[:20])
            return None
        try:
            parsed = jwt.PyJWK(entry, algorithm=parse_alg)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            # Only the error's kind: PyJWK's messages quote the whole JWK.
            log.debug("JWKS key %d skipped: unusable (%s)", index, type(exc).__name__)
            return None
        return _Key(kid=kid, kty=kty, crv=crv, alg=alg, key=parsed.key)

    async def _discover_jwks_uri(self) -> str:
        """The jwks_uri of the issuer's OAuth metadata (RFC 8414), else of its OpenID configuration."""
        assert self._jwt is not None
        issuer = self._jwt.issuer
        problems: list[str] = []
        for url in _metadata_urls(issuer):
            try:
                metadata = await self._get_json(url)
            except _FetchError as exc:
                problems.append(str(exc))
                continue
            # RFC 8414 §3.3 / OpenID Discovery §4.3: metadata for another issuer must not be used.
            if metadata.get("issuer") != issuer:
                problems.append(f"{url} names issuer {str(metadata.get('issuer'))[:200]!r}, not {issuer!r}")
                continue
            uri = metadata.get("jwks_uri")
            if not isinstance(uri, str) or not is_http_url(uri):
                problems.append(f"{url} has no http(s) jwks_uri")
                continue
            log.debug("JWT signing keys of %s are at %s", issuer, uri)
            return uri
        raise _FetchError("; ".join(problems))

    async def _get_json(self, url: str) -> dict[str, Any]:
        """A JSON object from ``url``: 200 only, within the time and size limits."""
        assert self._http is not None
        try:
            # fail_after bounds the whole exchange: httpx's timeout is per read, so a server trickling
            # bytes could otherwise hold a verification (and the fetch lock) for far longer.
            with anyio.fail_after(FETCH_TIMEOUT_S):
                async with self._http.stream(
                    "GET", url, headers={"Accept": "application/json"}, timeout=FETCH_TIMEOUT_S
                ) as response:
                    if response.status_code != 200:
                        raise _FetchError(f"{url} answered HTTP {response.status_code}")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_DOCUMENT_BYTES:
                            raise _FetchError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
        except TimeoutError:
            raise _FetchError(f"{url} did not answer within {FETCH_TIMEOUT_S:g} s") from None
        except httpx.HTTPError as exc:
            raise _FetchError(f"{url} could not be fetched ({type(exc).__name__}: {exc})") from None
        try:
            document = json.loads(bytes(body))
        except (ValueError, RecursionError):
            raise _FetchError(f"{url} did not answer JSON") from None
        if not isinstance(document, dict):
            raise _FetchError(f"{url} did not answer a JSON object")
        return document


def _access_token(token: str, claims: Mapping[str, Any], settings: JWTSettings) -> AccessToken:
    """The SDK's view of a verified JWT, after the checks PyJWT leaves loose."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _Refused("sub is empty")
    # PyJWT accepts a numeric string for these ("123"); a token is held to the JWT spec's numbers.
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is not None and not _is_number(value):
            raise _Refused(f"{name} is not a number")
    client_id = next(
        (v for v in (claims.get("client_id"), claims.get("azp")) if isinstance(v, str) and v),
        sub,
    )
    return AccessToken(
        token=token,
        client_id=client_id,
        scopes=_scopes(claims),
        # When this server stops accepting it: exp plus the leeway. The SDK's auth middleware checks
        # expires_at again, with no leeway of its own, so the leeway holds only if it is counted in here.
        expires_at=math.ceil(claims["exp"] + settings.leeway_s),
        resource=settings.audience,
        subject=sub,
        claims={"iss": claims["iss"]},
    )


def _scopes(claims: Mapping[str, Any]) -> list[str]:
    # RFC 9068 uses "scope" (space-separated); some issuers (Okta, Entra) use "scp", a list or a string.
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            return value.split()
        if isinstance(value, list):
            return [s for s in value if isinstance(s, str) and s]
    return []


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _metadata_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may be: RFC 8414's location first, then OpenID Discovery's."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    # RFC 8414 §3.1 puts the well-known segment before the issuer's path; OpenID Discovery appends it.
    oauth = urlunsplit((parts.scheme, parts.netloc, f"/.well-known/oauth-authorization-server{path}", "", ""))
    openid = urlunsplit((parts.scheme, parts.netloc, f"{path}/.well-known/openid-configuration", "", ""))
    return [oauth, openid]


def owner_of(token: AccessToken) -> str:
    """The owner id tasks are stamped with for a verified token: its subject, or the local owner.

    Raises ``ValueError`` for a token with no subject that is not the shared token, so that a
    token of unknown origin can never be mistaken for the shared user (and see its tasks).
    """
    if token.subject:
        return token.subject
    if token.subject is None and token.client_id == SHARED_TOKEN_CLIENT_ID:
        return LOCAL_OWNER
    raise ValueError("the token has no subject to own tasks")


def build_verifier(settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> BearerVerifier | None:
    """The verifier the settings ask for, or ``None`` when they ask for no authentication; it reads the time
    (its key cache, its fetch rate limit) on ``clock``.

    Raises :class:`ConfigError` naming the setting when the JWT settings are incomplete.
    """
    static = settings.auth_token.get_secret_value() if settings.auth_token is not None else None
    if static is not None and not static.strip():
        # Refused rather than taken as unset: an empty token meant as "auth on" must not mean "auth off".
        raise ConfigError("RUNAPI_MCP_AUTH_TOKEN must not be empty")
    jwt_settings: JWTSettings | None = None
    audience = (settings.jwt_audience or "").strip() or None
    if settings.jwt_issuer:
        if audience is None and settings.public_url:
            audience = f"{settings.public_url}/mcp"
        if audience is None:
            raise ConfigError(
                "RUNAPI_MCP_JWT_AUDIENCE must be set with RUNAPI_MCP_JWT_ISSUER "
                "(or RUNAPI_MCP_PUBLIC_URL, whose /mcp is then the audience)"
            )
        jwt_settings = JWTSettings(issuer=settings.jwt_issuer, audience=audience, jwks_url=settings.jwt_jwks_url)
    elif audience is not None or settings.jwt_jwks_url:
        # Without the issuer the other JWT settings do nothing: say so rather than serve unauthenticated.
        raise ConfigError("RUNAPI_MCP_JWT_ISSUER must be set for RUNAPI_MCP_JWT_AUDIENCE or RUNAPI_MCP_JWT_JWKS_URL")
    if static is None and jwt_settings is None:
        return None
    return BearerVerifier(static_token=static, jwt=jwt_settings, clock=clock)
