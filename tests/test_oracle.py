"""Our client sends what RunAPI's own SDK sends: for every operation the server uses, the same request.

Both clients talk to the session simulator over loopback HTTP, each through a recording transport that keeps
every request as it went on the wire: RunAPI's Python SDK (runapi-core 0.10.1 and the per-model packages, the
judge) and ``RunAPIClient`` (what the server sends). For each operation the two requests must agree on the
method, the path and query, the JSON body, and the headers that matter: the bearer key (or none, for the
upload's PUT to storage), ``Accept``, the body's ``Content-Type``, and exactly the storage headers RunAPI
prepared. The one difference allowed is ours on purpose: creates carry an ``Idempotency-Key`` (the SDK's plain
``create`` sends none; its retries and ours are safe only with one). The simulator's log must show the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from runapi.core import ClientOptions, HttpClient, PricingClient, ProviderClient, RequestOptions

from runapi_mcp.catalog import ActionSpec, get_catalog
from runapi_mcp.client import RunAPIClient
from runapi_mcp.simulator import Simulator
from tests.support import SIM_KEY, png_bytes
from tests.test_oracle_sdk import _body, _pick, _resource

pytestmark = pytest.mark.anyio

CATALOG = get_catalog()
# The headers whose values must agree (lower case); ``Content-Type`` only where there is a body.
COMPARED = ("authorization", "accept", "content-type")
OURS_ONLY = {"idempotency-key"}  # ours on purpose, on creates (see the module docstring)


class Wire:
    """Requests as they went on the wire, in order: method, path, query, headers, JSON body."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def take(self) -> list[httpx.Request]:
        taken, self.requests = self.requests, []
        return taken


class SyncRecorder(httpx.HTTPTransport):
    def __init__(self, wire: Wire) -> None:
        super().__init__()
        self.wire = wire

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.wire.requests.append(request)
        return super().handle_request(request)


class AsyncRecorder(httpx.AsyncHTTPTransport):
    def __init__(self, wire: Wire) -> None:
        super().__init__()
        self.wire = wire

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.wire.requests.append(request)
        return await super().handle_async_request(request)


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content) if request.content and "json" in request.headers.get("content-type", "") else None


def same_request(sdk: httpx.Request, ours: httpx.Request, *, body: bool = True) -> None:
    """The two requests agree on everything that matters (see the module docstring)."""
    assert (ours.method, ours.url.path, ours.url.query) == (sdk.method, sdk.url.path, sdk.url.query)
    for name in COMPARED:
        if name == "content-type" and not sdk.content:
            continue
        assert ours.headers.get(name) == sdk.headers.get(name), (sdk.url.path, name)
    extra = {k.lower() for k in ours.headers} - {k.lower() for k in sdk.headers} - OURS_ONLY
    assert not extra & {"authorization", "content-md5", "x-amz-checksum", "cookie"}, extra
    if body:
        assert body_of(ours) == body_of(sdk), sdk.url.path


@pytest.fixture
def sdk_wire(sim: Simulator) -> Iterator[tuple[Wire, HttpClient]]:
    wire = Wire()
    http = HttpClient(
        ClientOptions(api_key=SIM_KEY, base_url=sim.base_url, max_retries=0, timeout=30), transport=SyncRecorder(wire)
    )
    try:
        yield wire, http
    finally:
        http.close()


def our_client(sim: Simulator, wire: Wire) -> RunAPIClient:
    return RunAPIClient(SIM_KEY, sim.base_url, transport=AsyncRecorder(wire))


def provider(http: HttpClient) -> ProviderClient:
    return ProviderClient(api_key=SIM_KEY, http_client=http)


# -- tasks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", CATALOG.actions, ids=[a.key for a in CATALOG.actions])
async def test_a_create_and_a_status_read_on_every_route(
    sim: Simulator, sdk_wire: tuple[Wire, HttpClient], action: ActionSpec
) -> None:
    wire, http = sdk_wire
    body = _body(action, _pick(action), f"{sim.base_url}/files/none.png", "task-none")
    resource = _resource(action, http)
    created = resource.create(**body)  # type: ignore[attr-defined]
    resource.get(created.id)  # type: ignore[attr-defined]
    sdk_create, sdk_status = wire.take()
    ours = Wire()
    async with our_client(sim, ours) as client:
        info = await client.create_task(action.path, dict(body), idempotency_key="oracle-" + created.id)
        await client.get_task(action.path, info.id)
    our_create, our_status = ours.take()
    same_request(sdk_create, our_create)
    assert our_create.headers["idempotency-key"] and "idempotency-key" not in sdk_create.headers
    assert sdk_status.url.path == f"{action.path}/{created.id}"
    assert our_status.url.path == f"{action.path}/{info.id}"
    # The status reads differ only by the task's id: the rest agrees.
    assert (our_status.method, our_status.headers.get("authorization")) == ("GET", sdk_status.headers["authorization"])
    assert our_status.headers.get("accept") == sdk_status.headers.get("accept")


# -- the account, pricing and availability ----------------------------------------------------------------


async def test_the_balance(sim: Simulator, sdk_wire: tuple[Wire, HttpClient]) -> None:
    wire, http = sdk_wire
    provider(http).account.balance()
    ours = Wire()
    async with our_client(sim, ours) as client:
        await client.get_balance()
    [sdk], [mine] = wire.take(), ours.take()
    same_request(sdk, mine)


@pytest.mark.parametrize(
    ("service", "action", "model", "params"),
    [
        ("gpt_image_2", "text_to_image", "gpt-image-2", {"prompt": "a fox", "aspect_ratio": "1:1", "output_resolution": "1k"}),
        ("gpt_image_2_5", "edit_image", "gpt-image-2.5-flare", {"prompt": "a fox", "aspect_ratio": "16:9", "output_resolution": "4k"}),
        ("topaz", "upscale_image", "topaz-upscale-image", {"upscale_factor": 2}),
    ],
)
async def test_a_price_quote(
    sim: Simulator, sdk_wire: tuple[Wire, HttpClient], service: str, action: str, model: str, params: dict[str, Any]
) -> None:
    wire, http = sdk_wire
    answer = provider(http).pricing.create_quote(service=service, action=action, model=model, params=params)
    ours = Wire()
    async with our_client(sim, ours) as client:
        quote = await client.quote_price(service, action, model=model, params=params)
    [sdk], [mine] = wire.take(), ours.take()
    same_request(sdk, mine)
    assert body_of(mine)["params"] == params  # nested, never flat
    assert quote.reservation_amount_cents == answer.price_quote.reservation_amount_cents


async def test_the_price_schedules_then_not_modified(sim: Simulator, sdk_wire: tuple[Wire, HttpClient]) -> None:
    wire, http = sdk_wire
    pricing = PricingClient(http_client=http)
    first = pricing.list_schedules(service="gpt_image_2")
    ours = Wire()
    async with our_client(sim, ours) as client:
        table = await client.price_schedules(service="gpt_image_2")
        assert table is not None and table.etag
        assert await client.price_schedules(etag=table.etag, service="gpt_image_2") is None
    assert first is not None and len(first.price_schedules) == len(table.rows)
    assert pricing.list_schedules(service="gpt_image_2", options=RequestOptions(headers={"If-None-Match": table.etag})) is None
    sdk_first, sdk_again = wire.take()
    our_first, our_again = ours.take()
    same_request(sdk_first, our_first)
    same_request(sdk_again, our_again)
    assert our_again.headers["if-none-match"] == sdk_again.headers["if-none-match"] == table.etag


# -- files ------------------------------------------------------------------------------------------------


async def test_a_local_file_goes_up_in_the_same_three_steps(
    sim: Simulator, sdk_wire: tuple[Wire, HttpClient], tmp_path: Path
) -> None:
    wire, http = sdk_wire
    data = png_bytes((96, 64), (200, 40, 40))
    path = tmp_path / "fox.png"
    path.write_bytes(data)
    uploaded = provider(http).files.create(file=str(path))
    ours = Wire()
    async with our_client(sim, ours) as client:
        mine = await client.upload_file(data, filename="fox.png", mime_type="image/png")
    sdk_steps, our_steps = wire.take(), ours.take()
    assert [r.method for r in sdk_steps] == [r.method for r in our_steps] == ["POST", "PUT", "POST"]
    (sdk_prepare, sdk_put, sdk_confirm), (our_prepare, our_put, our_confirm) = sdk_steps, our_steps
    same_request(sdk_prepare, our_prepare)  # {filename, byte_size, checksum (base64 MD5)}
    # The PUT: to the URL prepared for each (one-use), with exactly the prepared headers, and no key.
    for put in (sdk_put, our_put):
        assert "authorization" not in put.headers and put.content == data
    assert sdk_put.url.path != our_put.url.path  # each its own signed target
    for name in ("content-type", "content-md5"):
        assert our_put.headers.get(name) == sdk_put.headers.get(name), name
    assert set(body_of(our_confirm)) == set(body_of(sdk_confirm)) == {"signed_id"}
    assert our_confirm.url.path == sdk_confirm.url.path == "/api/v1/files/confirm"
    assert mine.url.startswith(sim.base_url) and uploaded.url.startswith(sim.base_url)
    assert (mine.size_bytes, mine.mime_type) == (uploaded.size_bytes, uploaded.mime_type)
    # And the simulator saw both PUTs without an Authorization header.
    puts = [r for r in sim.requests if r.method == "PUT"]
    assert len(puts) == 2 and not any(r.sent_auth for r in puts)


async def test_a_remote_source(sim: Simulator, sdk_wire: tuple[Wire, HttpClient], tmp_path: Path) -> None:
    wire, http = sdk_wire
    path = tmp_path / "src.png"
    path.write_bytes(png_bytes((96, 64), (200, 40, 40)))
    source_url = provider(http).files.create(file=str(path)).url
    wire.take()
    provider(http).files.create(source=source_url, file_name="again.png")
    ours = Wire()
    async with our_client(sim, ours) as client:
        await client.upload_source({"type": "url", "url": source_url}, file_name="again.png")
    [sdk], [mine] = wire.take(), ours.take()
    same_request(sdk, mine)
    assert body_of(mine) == {"source": {"type": "url", "url": source_url}, "file_name": "again.png"}
