"""Bearer-token verification: the shared token, and JWTs checked against an issuer's JWKS over loopback HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from runapi_mcp.app import open_app
from runapi_mcp.config import ConfigError, load_settings
from runapi_mcp.http import auth
from runapi_mcp.http.app import HttpOptions
from runapi_mcp.http.auth import BearerVerifier, JWTSettings, build_verifier, owner_of
from runapi_mcp.http.serve import http_server
from runapi_mcp.simulator import Simulator
from runapi_mcp.tasks import LOCAL_OWNER
from tests.support import FAST_POLICY, FakeClock, free_port, make_settings

pytestmark = pytest.mark.anyio

AUDIENCE = "https://mcp.example.test/mcp"
JWKS_PATH = "/jwks.json"
OPENID_PATH = "/.well-known/openid-configuration"


# -- keys and tokens ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    rsa: RSAPrivateKey
    other_rsa: RSAPrivateKey  # not in the issuer's key set at first
    ec: EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        other_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
    )


def rsa_jwk(key: RSAPrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    return {**jwk, "use": "sig", **extra}


def ec_jwk(key: EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig", "alg": "ES256"}


def claims(issuer: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": "alice",
        "exp": now + 300,
        "iat": now,
        "scope": "images:generate images:read",
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def mint(key: Any, payload: dict[str, Any], *, kid: str | None = "k1", alg: str = "RS256") -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"


# -- the issuer: JWKS (and metadata) over loopback HTTP -------------------------------------------


@dataclass
class Issuer:
    """A stand-in OAuth issuer serving fixed documents, counting requests per path."""

    url: str = ""
    routes: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def serve_json(self, path: str, document: object, status: int = 200) -> None:
        with self.lock:
            self.routes[path] = (status, json.dumps(document).encode())

    def serve_keys(self, *jwks: object) -> None:
        self.serve_json(JWKS_PATH, {"keys": list(jwks)})

    def count(self, path: str) -> int:
        with self.lock:
            return self.hits[path]


@pytest.fixture
def issuer(keys: Keys) -> Iterator[Issuer]:
    state = Issuer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with state.lock:
                state.hits[self.path] += 1
                status, body = state.routes.get(self.path, (404, b"{}"))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output clean; requests are counted instead

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    state.serve_keys(rsa_jwk(keys.rsa, "k1"), ec_jwk(keys.ec, "e1"))
    # A short poll interval: shutdown() waits up to one, and every test stops a server.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def no_unexpected_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every refusal here has a known reason: the verifier's catch-all (an ERROR) must never fire."""
    yield
    errors = [r for r in caplog.get_records("call") if r.name == "runapi_mcp.http.auth" and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture
def clock() -> FakeClock:
    """Moved by hand: the verifier's key cache and fetch rate limit read its monotonic time."""
    return FakeClock()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # No proxies from the environment: the issuer is on loopback.
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


def verifier_for(
    issuer: Issuer, http: httpx.AsyncClient, clock: FakeClock, *, discover: bool = False, **settings: Any
) -> BearerVerifier:
    jwt_settings = JWTSettings(
        issuer=issuer.url, audience=AUDIENCE, jwks_url=None if discover else issuer.url + JWKS_PATH, **settings
    )
    return BearerVerifier(jwt=jwt_settings, http=http, clock=clock, static_token=None)


@pytest.fixture
def verifier(issuer: Issuer, http: httpx.AsyncClient, clock: FakeClock) -> BearerVerifier:
    return verifier_for(issuer, http, clock)


# -- valid tokens ---------------------------------------------------------------------------------


async def test_valid_rsa_token_accepted(verifier: BearerVerifier, issuer: Issuer, keys: Keys) -> None:
    payload = claims(issuer.url, azp="claude-desktop")
    token = mint(keys.rsa, payload)
    access = await verifier.verify_token(token)
    assert access is not None
    assert access.subject == "alice"
    assert access.scopes == ["images:generate", "images:read"]
    assert access.client_id == "claude-desktop"
    assert access.expires_at == payload["exp"] + 30  # accepted until then: exp plus the leeway
    assert access.resource == AUDIENCE
    assert access.claims == {"iss": issuer.url}
    assert access.token == token
    assert owner_of(access) == "alice"


async def test_valid_ec_token_and_scp_list(verifier: BearerVerifier, issuer: Issuer, keys: Keys) -> None:
    payload = claims(issuer.url, sub="bob", scope=None, scp=["a", "b"], aud=["other", AUDIENCE])
    access = await verifier.verify_token(mint(keys.ec, payload, kid="e1", alg="ES256"))
    assert access is not None
    assert (access.subject, access.scopes, access.client_id) == ("bob", ["a", "b"], "bob")


async def test_token_without_kid_uses_the_only_fitting_key(
    issuer: Issuer, http: httpx.AsyncClient, clock: FakeClock, keys: Keys
) -> None:
    issuer.serve_keys(rsa_jwk(keys.rsa, None), ec_jwk(keys.ec, "e1"))
    verifier = verifier_for(issuer, http, clock)
    assert await verifier.verify_token(mint(keys.rsa, claims(issuer.url), kid=None)) is not None
    # Two RSA keys: which one is ambiguous, so none is tried.
    issuer.serve_keys(rsa_jwk(keys.rsa, "k1"), rsa_jwk(keys.other_rsa, "k2"))
    await clock.advance(601)
    assert await verifier.verify_token(mint(keys.rsa, claims(issuer.url), kid=None)) is None


# -- refused tokens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NOW_PLUS:
    """A claim time this many seconds from when the test runs."""

    seconds: int


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"aud": "https://elsewhere.test/mcp"}, id="wrong-audience"),
        pytest.param({"aud": None}, id="no-audience"),
        pytest.param({"iss": "https://evil.test"}, id="wrong-issuer"),
        # Times as offsets from the test's own start (NOW_PLUS): values taken at collection go stale in a
        # long run (a suite of 12 minutes made "120 s in the future" the past).
        pytest.param({"exp": NOW_PLUS(-120)}, id="expired-beyond-leeway"),
        pytest.param({"exp": None}, id="no-exp"),
        pytest.param({"exp": "str", "exp_offset": 300}, id="exp-a-string"),
        pytest.param({"nbf": NOW_PLUS(120)}, id="not-yet-valid"),
        pytest.param({"iat": NOW_PLUS(120)}, id="issued-in-the-future"),
        pytest.param({"sub": None}, id="no-sub"),
        pytest.param({"sub": ""}, id="empty-sub"),
        pytest.param({"sub": 42}, id="numeric-sub"),
    ],
)
async def test_bad_claims_refused(
    verifier: BearerVerifier, issuer: Issuer, keys: Keys, overrides: dict[str, Any]
) -> None:
    payload = claims(issuer.url)
    now = int(time.time())
    for name, value in overrides.items():
        if isinstance(value, NOW_PLUS):
            value = now + value.seconds
        elif value == "str":
            value = str(now + overrides["exp_offset"])
        payload[name] = value
    payload.pop("exp_offset", None)
    payload = {k: v for k, v in payload.items() if v is not None}
    assert await verifier.verify_token(mint(keys.rsa, payload)) is None


async def test_expiry_within_leeway_accepted(verifier: BearerVerifier, issuer: Issuer, keys: Keys) -> None:
    token = mint(keys.rsa, claims(issuer.url, exp=int(time.time()) - 10, nbf=int(time.time()) + 10))
    assert await verifier.verify_token(token) is not None


async def test_signature_by_another_key_refused(verifier: BearerVerifier, issuer: Issuer, keys: Keys) -> None:
    assert await verifier.verify_token(mint(keys.other_rsa, claims(issuer.url), kid="k1")) is None
    token = mint(keys.rsa, claims(issuer.url))
    header, payload, signature = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["sub"] = "mallory"
    assert await verifier.verify_token(f"{header}.{b64(json.dumps(forged).encode())}.{signature}") is None


async def test_alg_none_refused(verifier: BearerVerifier, issuer: Issuer) -> None:
    for alg in ("none", "None", "NONE"):
        assert await verifier.verify_token(unsigned({"alg": alg, "kid": "k1"}, claims(issuer.url)) + ".") is None


async def test_hs256_with_the_public_key_as_secret_refused(
    verifier: BearerVerifier, issuer: Issuer, keys: Keys
) -> None:
    # The algorithm-confusion forgery: an HMAC keyed with the (public) RSA key, in its PEM and JWK forms.
    pem = keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, json.dumps(rsa_jwk(keys.rsa, "k1")).encode()):
        signing_input = unsigned({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims(issuer.url))
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert await verifier.verify_token(f"{signing_input}.{b64(signature)}") is None


async def test_algorithm_must_fit_the_key_and_the_settings(
    issuer: Issuer, http: httpx.AsyncClient, clock: FakeClock, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    # Keys that do not name their algorithm: only their type says which signatures they may verify.
    issuer.serve_keys(rsa_jwk(keys.rsa, "k1"), {k: v for k, v in ec_jwk(keys.ec, "e1").items() if k != "alg"})
    verifier = verifier_for(issuer, http, clock)
    # The EC key's kid on an RSA signature (and the other way round) is refused, not tried.
    with caplog.at_level(logging.DEBUG, logger="runapi_mcp.http.auth"):
        assert await verifier.verify_token(mint(keys.rsa, claims(issuer.url), kid="e1")) is None
        assert await verifier.verify_token(mint(keys.ec, claims(issuer.url), kid="k1", alg="ES256")) is None
    assert "no RS256 signing key for kid 'e1'" in caplog.text
    assert "no ES256 signing key for kid 'k1'" in caplog.text
    only_ec = verifier_for(issuer, http, clock, algorithms=("ES256",))
    assert await only_ec.verify_token(mint(keys.rsa, claims(issuer.url))) is None
    assert await only_ec.verify_token(mint(keys.ec, claims(issuer.url), kid="e1", alg="ES256")) is not None


async def test_garbage_and_oversized_tokens_refused_without_fetching(
    verifier: BearerVerifier, issuer: Issuer, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="runapi_mcp.http.auth"):
        for token in ("", "not-a-jwt", "a.b.c", "\udcff.x.y", "é.x.y", "x" * 9000, "eyJ" + "A" * 8200):
            assert await verifier.verify_token(token) is None
        # Even a properly signed one, when over 8 KB.
        big = mint(keys.rsa, claims(issuer.url, pad="x" * 8192))
        assert await verifier.verify_token(big) is None
    assert issuer.count(JWKS_PATH) == 0
    # Each refused for a reason it knows, not as an unexpected error.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_jwt_settings_refuse_symmetric_and_none_algorithms() -> None:
    for algs in (("HS256",), ("RS256", "none"), ()):
        with pytest.raises(ValueError):
            JWTSettings(issuer="https://idp.test", audience=AUDIENCE, algorithms=algs)


# -- the key set: cache, rotation, rate limit, outages --------------------------------------------


async def test_key_set_cached_and_refetched_after_ten_minutes(
    verifier: BearerVerifier, issuer: Issuer, clock: FakeClock, keys: Keys
) -> None:
    token = mint(keys.rsa, claims(issuer.url))
    for _ in range(3):
        assert await verifier.verify_token(token) is not None
    assert issuer.count(JWKS_PATH) == 1
    await clock.advance(601)
    assert await verifier.verify_token(token) is not None
    assert issuer.count(JWKS_PATH) == 2


async def test_unknown_kid_refetches_once_then_is_rate_limited(
    verifier: BearerVerifier, issuer: Issuer, clock: FakeClock, keys: Keys
) -> None:
    assert await verifier.verify_token(mint(keys.rsa, claims(issuer.url))) is not None
    assert issuer.count(JWKS_PATH) == 1
    await clock.advance(31)
    for n in range(20):
        forged = mint(keys.other_rsa, claims(issuer.url), kid=f"forged-{n}")
        assert await verifier.verify_token(forged) is None
    assert issuer.count(JWKS_PATH) == 2  # one refetch, then the limit holds
    await clock.advance(31)
    assert await verifier.verify_token(mint(keys.other_rsa, claims(issuer.url), kid="forged-x")) is None
    assert issuer.count(JWKS_PATH) == 3
    # The known key kept working throughout.
    assert await verifier.verify_token(mint(keys.rsa, claims(issuer.url))) is not None


async def test_rotated_key_accepted_after_refetch(
    verifier: BearerVerifier, issuer: Issuer, clock: FakeClock, keys: Keys
) -> None:
    assert await verifier.verify_token(mint(keys.rsa, claims(issuer.url))) is not None
    issuer.serve_keys(rsa_jwk(keys.rsa, "k1"), rsa_jwk(keys.other_rsa, "k2"))
    rotated = mint(keys.other_rsa, claims(issuer.url, sub="carol"), kid="k2")
    # Within 30 s of the last fetch the new kid is not looked for yet...
    assert await verifier.verify_token(rotated) is None
    assert issuer.count(JWKS_PATH) == 1
    await clock.advance(31)
    # ...after that it is, once.
    access = await verifier.verify_token(rotated)
    assert access is not None and access.subject == "carol"
    assert await verifier.verify_token(rotated) is not None
    assert issuer.count(JWKS_PATH) == 2


async def test_concurrent_verifications_share_one_fetch(verifier: BearerVerifier, issuer: Issuer, keys: Keys) -> None:
    token = mint(keys.rsa, claims(issuer.url))
    results: list[bool] = []

    async def verify() -> None:
        results.append(await verifier.verify_token(token) is not None)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(verify)
    assert results == [True] * 20
    assert issuer.count(JWKS_PATH) == 1


async def test_jwks_server_down_refuses_without_raising(
    http: httpx.AsyncClient, clock: FakeClock, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    verifier = BearerVerifier(
        jwt=JWTSettings(issuer=down, audience=AUDIENCE, jwks_url=down + JWKS_PATH), http=http, clock=clock
    )
    token = mint(keys.rsa, claims(down))
    with caplog.at_level(logging.DEBUG, logger="runapi_mcp.http.auth"):
        for _ in range(3):
            assert await verifier.verify_token(token) is None
            await clock.advance(6)  # past the failure backoff: each attempt reaches for the issuer again
    warnings = [r for r in caplog.records if r.name == "runapi_mcp.http.auth" and r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per failure streak
    assert token not in caplog.text


async def test_issuer_recovers_after_outage(
    verifier: BearerVerifier, issuer: Issuer, clock: FakeClock, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    token = mint(keys.rsa, claims(issuer.url))
    issuer.serve_json(JWKS_PATH, {"error": "unavailable"}, status=503)
    with caplog.at_level(logging.INFO, logger="runapi_mcp.http.auth"):
        assert await verifier.verify_token(token) is None
        assert await verifier.verify_token(token) is None  # within the backoff: not asked again
        assert issuer.count(JWKS_PATH) == 1
        issuer.serve_keys(rsa_jwk(keys.rsa, "k1"))
        await clock.advance(6)
        assert await verifier.verify_token(token) is not None
    ours = [r.levelno for r in caplog.records if r.name == "runapi_mcp.http.auth" and r.levelno >= logging.INFO]
    assert ours == [logging.WARNING, logging.INFO]


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(b'{"keys": {}}', id="keys-not-a-list"),
        pytest.param(b"<html>", id="not-json"),
        pytest.param(b"[" * 100_000, id="deep-nesting"),
    ],
)
async def test_bad_jwks_documents_refuse(verifier: BearerVerifier, issuer: Issuer, keys: Keys, document: bytes) -> None:
    with issuer.lock:
        issuer.routes[JWKS_PATH] = (200, document)
    assert await verifier.verify_token(mint(keys.rsa, claims(issuer.url))) is None


async def test_jwks_over_1_mib_refused(verifier: BearerVerifier, issuer: Issuer, clock: FakeClock, keys: Keys) -> None:
    issuer.serve_json(JWKS_PATH, {"keys": [rsa_jwk(keys.rsa, "k1")], "pad": "x" * (1024 * 1024)})
    assert await verifier.verify_token(mint(keys.rsa, claims(issuer.url))) is None
    issuer.serve_keys(rsa_jwk(keys.rsa, "k1"))
    await clock.advance(6)  # past the failure backoff
    assert await verifier.verify_token(mint(keys.rsa, claims(issuer.url))) is not None


async def test_unusable_keys_skipped(verifier: BearerVerifier, issuer: Issuer, keys: Keys) -> None:
    private = keys.other_rsa.private_numbers()
    issuer.serve_keys(
        {"kty": "oct", "kid": "k1", "k": b64(b"secret")},
        {"kty": "RSA", "kid": "k1", "n": "!!", "e": "AQAB"},
        {**rsa_jwk(keys.other_rsa, "k1"), "d": b64(private.d.to_bytes(256, "big"))},
        rsa_jwk(keys.other_rsa, "k1", use="enc"),
        rsa_jwk(keys.other_rsa, "k1", alg="HS256"),
        "not a key",
        rsa_jwk(keys.rsa, "k1"),
    )
    assert await verifier.verify_token(mint(keys.rsa, claims(issuer.url))) is not None
    assert await verifier.verify_token(mint(keys.other_rsa, claims(issuer.url))) is None


# -- discovery --------------------------------------------------------------------------------------


async def test_jwks_uri_discovered_from_openid_configuration(
    issuer: Issuer, http: httpx.AsyncClient, clock: FakeClock, keys: Keys
) -> None:
    issuer.serve_json(OPENID_PATH, {"issuer": issuer.url, "jwks_uri": issuer.url + JWKS_PATH})
    verifier = verifier_for(issuer, http, clock, discover=True)
    token = mint(keys.rsa, claims(issuer.url))
    assert await verifier.verify_token(token) is not None
    assert await verifier.verify_token(token) is not None
    # OAuth metadata first (absent here), then OpenID's; both looked up once.
    assert issuer.count("/.well-known/oauth-authorization-server") == 1
    assert (issuer.count(OPENID_PATH), issuer.count(JWKS_PATH)) == (1, 1)
    await clock.advance(601)
    assert await verifier.verify_token(token) is not None
    assert (issuer.count(OPENID_PATH), issuer.count(JWKS_PATH)) == (1, 2)


async def test_oauth_metadata_preferred(issuer: Issuer, http: httpx.AsyncClient, clock: FakeClock, keys: Keys) -> None:
    issuer.serve_json(
        "/.well-known/oauth-authorization-server", {"issuer": issuer.url, "jwks_uri": issuer.url + "/oauth-keys"}
    )
    issuer.serve_json("/oauth-keys", {"keys": [rsa_jwk(keys.rsa, "k1")]})
    verifier = verifier_for(issuer, http, clock, discover=True)
    assert await verifier.verify_token(mint(keys.rsa, claims(issuer.url))) is not None
    assert (issuer.count(OPENID_PATH), issuer.count(JWKS_PATH), issuer.count("/oauth-keys")) == (0, 0, 1)


async def test_metadata_for_another_issuer_ignored(
    issuer: Issuer, http: httpx.AsyncClient, clock: FakeClock, keys: Keys
) -> None:
    issuer.serve_json(OPENID_PATH, {"issuer": "https://evil.test", "jwks_uri": issuer.url + JWKS_PATH})
    verifier = verifier_for(issuer, http, clock, discover=True)
    assert await verifier.verify_token(mint(keys.rsa, claims(issuer.url))) is None
    assert issuer.count(JWKS_PATH) == 0


# -- the shared token, and both together ----------------------------------------------------------


async def test_static_token() -> None:
    verifier = BearerVerifier(static_token="s3cret-shared-token")
    access = await verifier.verify_token("s3cret-shared-token")
    assert access is not None
    assert (access.client_id, access.scopes, access.subject) == ("shared-token", [], None)
    assert owner_of(access) == LOCAL_OWNER
    for wrong in ("s3cret-shared-tokeN", "s3cret-shared-token ", "s3cret", "", "\udcff"):
        assert await verifier.verify_token(wrong) is None
    await verifier.aclose()
    with pytest.raises(ValueError):
        BearerVerifier(static_token="")
    with pytest.raises(ValueError):
        BearerVerifier()


async def test_static_and_jwt_together(issuer: Issuer, http: httpx.AsyncClient, clock: FakeClock, keys: Keys) -> None:
    verifier = BearerVerifier(
        static_token="shared",
        jwt=JWTSettings(issuer=issuer.url, audience=AUDIENCE, jwks_url=issuer.url + JWKS_PATH),
        http=http,
        clock=clock,
    )
    shared = await verifier.verify_token("shared")
    personal = await verifier.verify_token(mint(keys.rsa, claims(issuer.url)))
    assert shared is not None and owner_of(shared) == LOCAL_OWNER
    assert personal is not None and owner_of(personal) == "alice"
    assert await verifier.verify_token("not-shared") is None
    assert issuer.count(JWKS_PATH) == 1  # the shared token needs no keys


async def test_aclose_closes_only_its_own_client(http: httpx.AsyncClient) -> None:
    settings = JWTSettings(issuer="https://idp.test", audience=AUDIENCE)
    borrowed = BearerVerifier(jwt=settings, http=http)
    await borrowed.aclose()
    assert not http.is_closed
    own = BearerVerifier(jwt=settings)
    client = own._http
    assert client is not None and not client.is_closed
    await own.aclose()
    assert client.is_closed


# -- build_verifier ---------------------------------------------------------------------------------


def settings_verifier(tmp_path: Path, **values: Any) -> BearerVerifier | None:
    return build_verifier(load_settings(values, environ={}, config_file=tmp_path / "none"))


async def test_build_verifier_from_settings(tmp_path: Path, issuer: Issuer, keys: Keys) -> None:
    assert settings_verifier(tmp_path) is None

    shared = settings_verifier(tmp_path, auth_token="tok")
    assert shared is not None and await shared.verify_token("tok") is not None

    # The audience defaults to the public URL's /mcp.
    verifier = settings_verifier(
        tmp_path, jwt_issuer=issuer.url, jwt_jwks_url=issuer.url + JWKS_PATH, public_url="https://mcp.example.test/"
    )
    assert verifier is not None
    try:
        assert await verifier.verify_token(mint(keys.rsa, claims(issuer.url))) is not None
    finally:
        await verifier.aclose()

    explicit = settings_verifier(
        tmp_path,
        jwt_issuer=issuer.url,
        jwt_jwks_url=issuer.url + JWKS_PATH,
        jwt_audience="api://runapi",
        public_url="https://mcp.example.test",
    )
    assert explicit is not None
    try:
        assert await explicit.verify_token(mint(keys.rsa, claims(issuer.url))) is None
        assert await explicit.verify_token(mint(keys.rsa, claims(issuer.url, aud="api://runapi"))) is not None
    finally:
        await explicit.aclose()


def test_build_verifier_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RUNAPI_MCP_JWT_AUDIENCE"):
        settings_verifier(tmp_path, jwt_issuer="https://idp.test")
    with pytest.raises(ConfigError, match="RUNAPI_MCP_JWT_ISSUER"):
        settings_verifier(tmp_path, jwt_audience="api://runapi")
    with pytest.raises(ConfigError, match="RUNAPI_MCP_AUTH_TOKEN"):
        settings_verifier(tmp_path, auth_token="  ")


# -- through the real HTTP path: a hanging issuer, and the leeway ------------------------------------

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@dataclass
class HangingIssuer:
    """An issuer that accepts every connection and never answers (its metadata and JWKS alike)."""

    url: str
    connections: list[socket.socket]


@pytest.fixture
def hanging_issuer() -> Iterator[HangingIssuer]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # read nothing, answer nothing: the request hangs until the client gives up

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield HangingIssuer(f"http://127.0.0.1:{listener.getsockname()[1]}", held)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in held:
            conn.close()


async def test_a_hanging_issuer_costs_one_timeout_then_requests_fail_fast(
    sim: Simulator, home: Path, inputs: Path, hanging_issuer: HangingIssuer, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shipped ratio (a 10 s timeout, a 5 s backoff), scaled down: the backoff is shorter than the fetch,
    # so counted from the fetch's start it would be over before the fetch ended, and each request would
    # wait out a fetch of its own.
    monkeypatch.setattr(auth, "FETCH_TIMEOUT_S", 1.5)
    monkeypatch.setattr(auth, "FAILURE_BACKOFF_S", 1.0)
    url = hanging_issuer.url
    settings = make_settings(sim, home, inputs, jwt_issuer=url, jwt_audience=AUDIENCE)  # discovery: metadata first
    token = {"Authorization": f"Bearer {mint(keys.rsa, claims(url))}"}
    async with (
        open_app(settings, policy=FAST_POLICY) as app,
        http_server(app, HttpOptions(port=0, jwt_issuer=url), settings) as running,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.port}", trust_env=False, timeout=30) as http,
    ):

        async def refused_in() -> float:
            started = time.monotonic()
            answer = await http.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **token})
            assert answer.status_code == 401, answer.text
            return time.monotonic() - started

        # The first request waits for the fetch: one timeout in all, though discovery asks two documents.
        first = await refused_in()
        fetch_ended = time.monotonic()
        assert 1.4 <= first < 2.5, first
        asked = len(hanging_issuer.connections)
        assert asked == 1  # the first metadata document hung; the second was never asked for
        # Right after, within the backoff counted from the fetch's end: refused at once, the issuer left alone.
        fast = [await refused_in() for _ in range(3)]
        assert max(fast) < 0.5, fast
        assert len(hanging_issuer.connections) == asked
        assert time.monotonic() - fetch_ended < 1.0  # all within the backoff (after it: test_issuer_recovers_...)


async def test_a_token_expired_within_the_leeway_is_accepted_over_http(
    sim: Simulator, home: Path, inputs: Path, issuer: Issuer, keys: Keys
) -> None:
    settings = make_settings(
        sim, home, inputs, jwt_issuer=issuer.url, jwt_audience=AUDIENCE, jwt_jwks_url=issuer.url + JWKS_PATH
    )
    now = int(time.time())
    late = {"Authorization": f"Bearer {mint(keys.rsa, claims(issuer.url, exp=now - 10))}"}  # leeway: 30 s
    expired = {"Authorization": f"Bearer {mint(keys.rsa, claims(issuer.url, exp=now - 45))}"}
    async with (
        open_app(settings, policy=FAST_POLICY) as app,
        http_server(app, HttpOptions(port=0, jwt_issuer=issuer.url), settings) as running,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.port}", trust_env=False, timeout=30) as http,
    ):
        # The SDK's auth middleware checks expiry again on its own: it must see the leeway too.
        answer = await http.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **late})
        assert answer.status_code == 200, answer.text
        assert (await http.get("/gallery", headers=late)).status_code == 200
        for path in ("/mcp", "/gallery"):
            refused = await http.request(
                "POST" if path == "/mcp" else "GET",
                path,
                headers={**MCP_HEADERS, **expired},
                json=INITIALIZE if path == "/mcp" else None,
            )
            assert refused.status_code == 401, path
