"""Per-user OAuth access tokens over HTTP: JWT checks, isolation between users, per-user spend caps.

Tokens are minted with a local key; the issuer's JWKS is served on loopback (``tests.test_auth_tokens``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp.client import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated
from mcp.types import ResourceListChangedNotification, ResourceUpdatedNotification

from runapi_mcp.app import App, open_app
from runapi_mcp.http.app import HttpOptions
from runapi_mcp.http.serve import http_server
from runapi_mcp.simulator import Simulator
from tests.support import FAST_POLICY, make_settings, text_of, upstream_creates
from tests.test_auth_tokens import AUDIENCE, JWKS_PATH, Issuer, Keys, claims, issuer, keys, mint

pytestmark = pytest.mark.anyio

__all__ = ["issuer", "keys"]  # fixtures used here, defined beside the verifier's own tests


@asynccontextmanager
async def serving(
    sim: Simulator, home: Path, inputs: Path, issuer: Issuer, **overrides: Any
) -> AsyncIterator[tuple[App, str]]:
    settings = make_settings(
        sim, home, inputs, jwt_issuer=issuer.url, jwt_audience=AUDIENCE, jwt_jwks_url=issuer.url + JWKS_PATH,
        **overrides,
    )  # fmt: skip
    options = HttpOptions(port=0, public_url=settings.public_url, jwt_issuer=settings.jwt_issuer)
    async with open_app(settings, policy=FAST_POLICY) as app, http_server(app, options, settings) as running:
        yield app, f"http://127.0.0.1:{running.port}"


def token_for(keys: Keys, issuer: Issuer, subject: str, **overrides: Any) -> str:
    return mint(keys.rsa, claims(issuer.url, sub=subject, **overrides))


def connect(base: str, token: str, transport: str = "streamable-http", mode: str = "legacy") -> Client:
    headers = {"Authorization": f"Bearer {token}"}
    stream: AbstractAsyncContextManager[Any]
    if transport == "sse":
        stream = sse_client(f"{base}/sse", headers=headers)
    else:
        stream = streamable_http_client(f"{base}/mcp", http_client=httpx2.AsyncClient(headers=headers, timeout=30))
    return Client(stream, mode=mode)


async def test_jwt_checks_at_the_door(
    sim: Simulator, home: Path, inputs: Path, issuer: Issuer, keys: Keys
) -> None:
    now = int(time.time())
    refused = {
        "bad signature": mint(keys.other_rsa, claims(issuer.url)),
        "wrong audience": mint(keys.rsa, claims(issuer.url, aud="https://other.example/mcp")),
        "expired": mint(keys.rsa, claims(issuer.url, exp=now - 600, iat=now - 1200)),
        "wrong issuer": mint(keys.rsa, claims("https://evil.example")),
        "no subject": mint(keys.rsa, claims(issuer.url, sub=None)),
    }
    async with serving(sim, home, inputs, issuer) as (_, base), httpx.AsyncClient(base_url=base) as http:
        for why, token in refused.items():
            for path in ("/mcp", "/sse", "/files/x"):
                answer = await http.get(path, headers={"Authorization": f"Bearer {token}"})
                assert answer.status_code == 401, (why, path, answer.status_code)
        async with connect(base, token_for(keys, issuer, "alice")) as client:
            assert not (await client.call_tool("list_tasks", {})).is_error


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_another_users_tasks_and_images_are_not_found(
    sim: Simulator, home: Path, inputs: Path, issuer: Issuer, keys: Keys, transport: str
) -> None:
    alice_token, bob_token = token_for(keys, issuer, "alice"), token_for(keys, issuer, "bob")
    async with serving(sim, home, inputs, issuer) as (app, base):
        async with connect(base, alice_token, transport) as alice:
            made = await alice.call_tool("generate_image", {"prompt": "alice's private picture"})
            assert not made.is_error, text_of(made)
            data = made.structured_content or {}
            task_id, upstream_id = data["task_id"], data["runapi_task_id"]
            image_uri = data["images"][0]["uri"]
            image_id = image_uri.removeprefix("runapi://images/")
            assert (await alice.call_tool("get_task", {"task_id": task_id})).structured_content
            listed = await alice.call_tool("list_tasks", {})
            assert task_id in text_of(listed)
        creates = len(upstream_creates(sim))
        async with connect(base, bob_token, transport) as bob:
            for wanted in (task_id, upstream_id):
                refused = await bob.call_tool("get_task", {"task_id": wanted})
                assert refused.is_error and "not a task" in text_of(refused), text_of(refused)
            listed = await bob.call_tool("list_tasks", {})
            assert task_id not in text_of(listed) and not (listed.structured_content or {})["tasks"]
            for uri in (f"runapi://tasks/{task_id}", image_uri):
                with pytest.raises(Exception, match=r"not a task|no image"):  # not found, as if never made
                    await bob.read_resource(uri)
            resources = await bob.list_resources()
            assert not any(task_id in str(r.uri) or image_id in str(r.uri) for r in resources.resources)
            for reference in (task_id, image_uri):
                edit = await bob.call_tool("edit_image", {"prompt": "steal it", "images": [reference]})
                assert edit.is_error, text_of(edit)
            upscale = await bob.call_tool("upscale_image", {"image": task_id})
            assert upscale.is_error
        assert len(upstream_creates(sim)) == creates  # nothing was created for bob's attempts
        async with httpx.AsyncClient(base_url=base) as http:
            as_bob = await http.get(f"/files/{image_id}", headers={"Authorization": f"Bearer {bob_token}"})
            as_alice = await http.get(f"/files/{image_id}", headers={"Authorization": f"Bearer {alice_token}"})
        assert as_bob.status_code == 404 and as_alice.status_code == 200
        stored = await app.manager.store.get(task_id)
        assert stored is not None and stored.owner == "alice"


async def test_a_spending_cap_per_user(sim: Simulator, home: Path, inputs: Path, issuer: Issuer, keys: Keys) -> None:
    async with serving(sim, home, inputs, issuer, user_spend_cents="bob=0") as (_, base):
        async with connect(base, token_for(keys, issuer, "bob")) as bob:
            refused = await bob.call_tool("generate_image", {"prompt": "over the cap"})
            assert refused.is_error and "cap" in text_of(refused)
        async with connect(base, token_for(keys, issuer, "alice")) as alice:
            assert not (await alice.call_tool("generate_image", {"prompt": "no cap for alice"})).is_error
    assert len(upstream_creates(sim)) == 1


async def test_clients_discover_the_issuer(sim: Simulator, home: Path, inputs: Path, issuer: Issuer) -> None:
    public = "http://127.0.0.1:9"  # as clients would reach it; only the metadata is read here
    async with (
        serving(sim, home, inputs, issuer, public_url=public) as (_, base),
        httpx.AsyncClient(base_url=base) as http,
    ):
        refused = await http.post("/mcp", json={})
        metadata = await http.get("/.well-known/oauth-protected-resource/mcp")
    assert refused.status_code == 401
    assert "resource_metadata=" in refused.headers["www-authenticate"]
    assert metadata.status_code == 200
    document = metadata.json()
    assert document["resource"] == f"{public}/mcp"
    assert document["authorization_servers"] == [issuer.url]


async def test_live_updates_reach_only_the_owner_in_both_eras(
    sim: Simulator, home: Path, inputs: Path, issuer: Issuer, keys: Keys
) -> None:
    alice_token, bob_token = token_for(keys, issuer, "alice"), token_for(keys, issuer, "bob")
    bob_heard: list[object] = []
    alice_heard: list[object] = []

    async def bob_messages(message: object) -> None:
        bob_heard.append(message)

    async with serving(sim, home, inputs, issuer) as (_, base):
        headers = {"Authorization": f"Bearer {bob_token}"}
        modern_stream = streamable_http_client(
            f"{base}/mcp", http_client=httpx2.AsyncClient(headers=headers, timeout=30)
        )
        async with (
            Client(modern_stream, mode="2026-07-28") as bob_modern,
            Client(sse_client(f"{base}/sse", headers=headers), mode="legacy", message_handler=bob_messages),
            connect(base, alice_token) as alice,
        ):
            sim.set_task_outcome(None, "running")
            made = await alice.call_tool("generate_image", {"prompt": "alice's", "wait": False})
            data = made.structured_content or {}
            uri = f"runapi://tasks/{data['task_id']}"
            assert "not a resource" in await bob_legacy_subscribe(base, bob_token, uri)
            async with (
                bob_modern.listen(resource_subscriptions=[uri], resources_list_changed=True) as bob_listen,
                connect(base, alice_token, mode="2026-07-28") as alice_modern,
                alice_modern.listen(resource_subscriptions=[uri], resources_list_changed=True) as alice_listen,
            ):
                sim.set_task_outcome(data["runapi_task_id"], "completed")
                with anyio.fail_after(10):
                    async for event in alice_listen:
                        alice_heard.append(event)
                        if isinstance(event, ResourceUpdated):
                            break
                done = await alice.call_tool("get_task", {"task_id": data["task_id"], "wait": True})
                assert (done.structured_content or {})["status"] == "completed"
                with anyio.move_on_after(1.0):
                    async for event in bob_listen:
                        bob_heard.append(event)
    assert alice_heard
    assert not [m for m in bob_heard if isinstance(m, ResourceUpdated | ResourcesListChanged)]
    assert not [
        m for m in bob_heard if isinstance(m, ResourceUpdatedNotification | ResourceListChangedNotification)
    ]


async def bob_legacy_subscribe(base: str, token: str, uri: str) -> str:
    """The error a 2025-era subscribe to ``uri`` gets ("" if it is accepted)."""
    async with connect(base, token) as bob:
        try:
            await bob.subscribe_resource(uri)
        except MCPError as exc:
            return str(exc)
    return ""
