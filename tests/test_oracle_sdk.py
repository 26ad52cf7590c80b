"""RunAPI's own Python SDK (runapi-core 0.10.1 and the per-model packages) is the judge of the simulator.

Every operation the SDK has for image work is run against the session simulator over loopback HTTP, with the
SDK's own client classes: a create and poll to completion on one model of every route in the catalog, the
three-step upload of a local file and the JSON sources, price quotes and schedules (304 on ``If-None-Match``),
the balance and the profile, the poller's failures, and an error that still names the task it created.
Whatever the SDK refuses to parse, the simulator answers wrongly (and so, probably, does the client built on it).

The SDK is synchronous (httpx): these tests are plain functions. Its poller waits ``Retry-After`` when a status
answer carries one, instead of its 2 s default: the module sets the simulator's ``status_retry_after`` so the
whole file takes a few seconds.
"""

from __future__ import annotations

import base64
import importlib
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from runapi.core import (
    AccountBalanceResponse,
    AccountInfoResponse,
    AuthenticationError,
    ClientOptions,
    HttpClient,
    PriceQuoteResponse,
    PriceScheduleListResponse,
    PricingClient,
    ProviderClient,
    RequestOptions,
    Resource,
    ServerError,
    TaskFailedError,
    TaskResponse,
    UploadResponse,
    ValidationError,
)
from runapi.gpt_image_2 import GptImage2Client

from runapi_mcp.catalog import ActionSpec, FieldSpec, ModelSpec, get_catalog
from runapi_mcp.simulator import Fault, Simulator
from runapi_mcp.simulator._tasks import ApiError, validate_body
from tests.support import SIM_KEY, png_bytes

CATALOG = get_catalog()
PROMPT = "a lighthouse on a cliff at dusk"
RETRY_AFTER_S = 0.05
T2I = "/api/v1/gpt_image_2/text_to_image"


class RouteResource(Resource):
    """A route of a family RunAPI ships no SDK package for, made the way the packages make theirs."""

    ENDPOINT: str = ""

    def __init__(self, http: Any, endpoint: str) -> None:
        super().__init__(http)
        self.ENDPOINT = endpoint

    def create(self, options: RequestOptions | None = None, **params: Any) -> Any:
        return self._request("post", self.ENDPOINT, body=self._compact_params(params), options=options)

    def get(self, task_id: str, options: RequestOptions | None = None) -> Any:
        return self._request("get", f"{self.ENDPOINT}/{task_id}", options=options)

    def run(self, options: RequestOptions | None = None, **params: Any) -> Any:
        task = self.create(options=options, **params)
        return self._poll_until_complete(lambda: self.get(task.id, options=options))


@pytest.fixture(scope="module")
def oracle(simulator: Simulator) -> Iterator[Simulator]:
    """The session simulator as new, its status answers carrying a short ``Retry-After`` (the SDK's poll pace)."""
    simulator.reset()
    simulator.configure(status_retry_after=RETRY_AFTER_S)
    try:
        yield simulator
    finally:
        simulator.reset()


def _options(sim: Simulator) -> dict[str, Any]:
    """Client options: the simulator, the test key, quick retries (the SDK's own backoff is 0.5 s and up)."""
    return {"api_key": SIM_KEY, "base_url": sim.base_url, "timeout": 30, "retry_base_delay": 0.01, "retry_max_delay": 0.05}


@pytest.fixture(scope="module")
def shared_http(oracle: Simulator) -> Iterator[HttpClient]:
    """One SDK transport for the many clients of a test (``ClientOptions.http_client``): each ``HttpClient``
    builds two TLS contexts, some 70 ms of CPU."""
    http = HttpClient(ClientOptions(**_options(oracle)))
    try:
        yield http
    finally:
        http.close()


def _resource(action: ActionSpec, http: HttpClient) -> Resource:
    """The SDK's resource for ``action``: its package's (``runapi.<service>``), found by ``ENDPOINT``, or a
    ``RouteResource`` when RunAPI ships no package with that route."""
    try:
        module = importlib.import_module(f"runapi.{action.service}")
    except ModuleNotFoundError:
        module = None
    if module is not None:
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, ProviderClient) and value is not ProviderClient:
                client = value(api_key=SIM_KEY, http_client=http)
                for resource in vars(client).values():
                    if isinstance(resource, Resource) and getattr(resource, "ENDPOINT", None) == action.path:
                        return resource
    return RouteResource(http, action.path)


# -- a valid body for any model --------------------------------------------------------------------------
def _value(field: FieldSpec, slug: str, image_url: str, task_id: str) -> Any:
    if field.name == "model":
        return slug
    if field.enum:
        return field.default if field.default in field.enum else field.enum[0]
    if field.default is not None:
        return field.default
    if field.name == "source_task_id":
        return task_id
    if field.is_url:
        return [image_url] if field.type == "array" else image_url
    if field.type == "integer":
        return int(field.min) if field.min is not None else 1
    if field.type == "number":
        return field.min if field.min is not None else 1
    if field.type == "boolean":
        return False
    if field.type == "array":
        return ["a"]
    return PROMPT


def _body(action: ActionSpec, spec: ModelSpec, image_url: str, task_id: str) -> dict[str, Any]:
    """The required fields (and ``model``) with plain values, mended until the simulator's validation (the
    catalog's fields and rules) takes it: a rule may ask for a field, or refuse one."""
    body = {name: _value(f, spec.slug, image_url, task_id) for name, f in spec.fields.items() if f.required}
    if spec.send_model:
        body["model"] = spec.slug
    for _ in range(len(spec.fields) + 1):
        try:
            validate_body(action, body)
            return body
        except ApiError as err:
            name = err.field
            if name is None:
                raise
            if name in body and not spec.fields[name].required:
                del body[name]
            elif name in spec.fields and name not in body:
                body[name] = _value(spec.fields[name], spec.slug, image_url, task_id)
            else:
                raise
    raise AssertionError(f"no valid body for {spec.slug} on {action.path}: {body}")


def _pick(action: ActionSpec) -> ModelSpec:
    """The model of ``action`` with the fewest required fields (then by name)."""
    return min(action.models.values(), key=lambda s: (sum(f.required for f in s.fields.values()), s.slug))


def _run(action: ActionSpec, http: HttpClient, image_url: str, task_id: str) -> tuple[ActionSpec, Any]:
    spec = _pick(action)
    body = _body(action, spec, image_url, task_id)
    return action, _resource(action, http).run(**body)  # type: ignore[attr-defined]


def _check_completed(action: ActionSpec, result: Any) -> None:
    where = f"{action.path} ({_pick(action).slug})"
    assert isinstance(result, TaskResponse), where
    assert result.status == "completed", where
    assert result.runapi_task_id == result.id, where
    images = result["images"] or []
    assert images and all(str(image.url).startswith("http") for image in images), where
    assert result.usage is not None and result.usage.cost > 0, where
    assert result.usage.generated_images == len(images), where
    if action.endpoint == "decompose_layers":
        assert result.base_image.url and result.layers and result.layers[0].z_index == 1, where


# -- tasks ---------------------------------------------------------------------------------------------
def test_every_route_runs_to_completion_with_the_sdk(oracle: Simulator, shared_http: HttpClient, tmp_path: Path) -> None:
    """One model of every route in the catalog, created and polled by the SDK's ``run()`` (the route's
    package resource where RunAPI ships one); a route that takes a ``source_task_id`` gets a finished task."""
    source = tmp_path / "source.png"
    source.write_bytes(png_bytes((96, 64), (200, 40, 40)))
    uploaded = ProviderClient(api_key=SIM_KEY, http_client=shared_http).files.create(file=source)
    takes_task = [a for a in CATALOG.actions if "source_task_id" in _pick(a).fields and _pick(a).fields["source_task_id"].required]
    first = [a for a in CATALOG.actions if a not in takes_task]
    with ThreadPoolExecutor(max_workers=len(CATALOG.actions)) as pool:
        done = list(pool.map(lambda a: _run(a, shared_http, uploaded.url, ""), first))
        for action, result in done:
            _check_completed(action, result)
        finished = {action.service: result.id for action, result in done}
        later = list(
            pool.map(
                lambda a: _run(a, shared_http, uploaded.url, finished.get(a.service, next(iter(finished.values())))),
                takes_task,
            )
        )
    for action, result in later:
        _check_completed(action, result)
    assert {a.path for a, _ in done + later} == {a.path for a in CATALOG.actions}


def test_gpt_image_2_create_then_get(oracle: Simulator) -> None:
    client = GptImage2Client(**_options(oracle))
    task = client.text_to_image.create(model="gpt-image-2", prompt=PROMPT, aspect_ratio="16:9", output_resolution="2k")
    assert task.status == "pending" and task.runapi_task_id == task.id
    assert task.response_header("x-request-id")
    oracle.set_task_outcome(task.id, "completed")
    done = client.text_to_image.get(task.id)
    assert done.status == "completed" and done.images[0].url
    assert done.usage.cost == pytest.approx(0.06)  # a float amount in US dollars (runapi-core 0.10.1)
    # The same key twice: one task, the second answer says it was replayed.
    key = RequestOptions(headers={"Idempotency-Key": f"oracle-{uuid.uuid4()}", "X-Client-Request-Id": "order-123"})
    made = client.text_to_image.create(options=key, model="gpt-image-2", prompt=PROMPT)
    assert made.response_header("X-Client-Request-Id") == "order-123"  # echoed
    again = client.text_to_image.create(options=key, model="gpt-image-2", prompt=PROMPT)
    assert again.id == made.id and again.task_replayed is True and made.task_replayed is None


# -- files ---------------------------------------------------------------------------------------------
def test_files_create_uploads_a_local_file_in_three_steps(oracle: Simulator, tmp_path: Path) -> None:
    data = png_bytes((50, 40), (20, 160, 20))
    path = tmp_path / "green.png"
    path.write_bytes(data)
    oracle.clear_log()
    client = ProviderClient(**_options(oracle))
    uploaded = client.files.create(file=path)
    assert isinstance(uploaded, UploadResponse)
    assert uploaded.size_bytes == len(data) and uploaded.mime_type == "image/png"
    assert uploaded.created_at < uploaded.expires_at
    steps = [(r.method, r.path.split("/storage/")[0] or "/storage", r.status) for r in oracle.requests]
    assert steps == [("POST", "/api/v1/files/prepare", 200), ("PUT", "/storage", 200), ("POST", "/api/v1/files/confirm", 200)]
    put = oracle.requests[1]
    assert not put.sent_auth and put.authorized is False  # storage got no key
    assert all(r.sent_auth for r in oracle.requests if r.method == "POST")
    assert httpx.get(uploaded.url).content == data
    # A file-like object with a name, and an explicit file name.
    with path.open("rb") as handle:
        named = client.files.create(file=handle, file_name="renamed.png")
    assert named.file_name.endswith("renamed.png")


def test_files_create_from_a_url_or_base64_source(oracle: Simulator) -> None:
    data = png_bytes((30, 30), (10, 10, 200))
    files = ProviderClient(**_options(oracle)).files
    inline = files.create(source=base64.b64encode(data).decode("ascii"), file_name="blue.png")
    assert isinstance(inline, UploadResponse) and inline.size_bytes == len(data)
    fetched = files.create(source=inline.url)  # an http(s) URL: {"type": "url"}
    assert fetched.size_bytes == len(data) and httpx.get(fetched.url).content == data
    canonical = files.create(source={"type": "base64", "data": base64.b64encode(data).decode("ascii")})
    assert canonical.mime_type == "image/png"
    with pytest.raises(ValidationError) as refused:
        files.create(source="https://example.com/not-reachable-from-here.png")
    assert refused.value.status == 422


# -- pricing and account ---------------------------------------------------------------------------------
def test_price_quote(oracle: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNAPI_API_KEY", raising=False)
    params = {"prompt": PROMPT, "output_resolution": "4k", "aspect_ratio": "16:9"}
    keyed = ProviderClient(**_options(oracle)).pricing.create_quote("gpt_image_2", "text_to_image", "gpt-image-2", params)
    assert isinstance(keyed, PriceQuoteResponse)
    quote = keyed.price_quote
    assert (quote.service, quote.action, quote.model, quote.currency) == ("gpt_image_2", "text_to_image", "gpt-image-2", "USD")
    assert quote.reservation_amount_cents == 12 and quote.pricing_status and quote.estimate_basis and quote.as_of
    # No key needed: the standalone client without one.
    anonymous = PricingClient(base_url=oracle.base_url, timeout=30)
    free = anonymous.create_quote("gpt-image-2", "text-to-image", "gpt-image-2", {"prompt": PROMPT})
    assert free.price_quote.reservation_amount_cents == 3
    with pytest.raises(ValidationError) as refused:
        anonymous.create_quote("gpt_image_2", "text_to_image", "gpt-image-2", {"prompt": PROMPT, "aspect_ratio": "7:3"})
    assert refused.value.status == 422 and refused.value.details["error"]["field"] == "params.aspect_ratio"
    # A quote that uses an existing task as pricing context needs the key of that task's account.
    task_id = GptImage2Client(**_options(oracle)).text_to_image.create(model="gpt-image-2", prompt=PROMPT).id
    from_task = {"source_task_id": task_id}
    with pytest.raises(AuthenticationError):
        anonymous.create_quote("grok_imagine", "segment_map", "grok-imagine-image-2-0", from_task)
    priced = ProviderClient(**_options(oracle)).pricing.create_quote("grok_imagine", "segment_map", "grok-imagine-image-2-0", from_task)
    assert priced.price_quote.reservation_amount_cents > 0


def test_price_schedules_and_not_modified(oracle: Simulator) -> None:
    pricing = ProviderClient(**_options(oracle)).pricing
    listed = pricing.list_schedules(service="gpt_image_2", action="text_to_image", model="gpt-image-2")
    assert isinstance(listed, PriceScheduleListResponse)
    [row] = listed.price_schedules
    assert (row.service, row.action, row.model, row.catalog_status) == ("gpt_image_2", "text_to_image", "gpt-image-2", "active")
    assert row.currency == "USD" and row.unit_price_cents == 3 and row.billing_unit and row.billing_strategy
    etag = listed.response_header("ETag")
    assert etag
    unchanged = pricing.list_schedules(
        service="gpt_image_2", action="text_to_image", model="gpt-image-2", options=RequestOptions(headers={"If-None-Match": etag})
    )
    assert unchanged is None  # 304
    everything = PricingClient(base_url=oracle.base_url, timeout=30).list_schedules()
    assert everything is not None
    assert {(r.service, r.action) for r in everything.price_schedules} >= {(a.service, a.endpoint) for a in CATALOG.actions}


def test_account(oracle: Simulator) -> None:
    account = ProviderClient(**_options(oracle)).account
    balance = account.balance()
    assert isinstance(balance, AccountBalanceResponse) and balance.balance_cents == oracle.balance_cents
    info = account.info()
    assert isinstance(info, AccountInfoResponse) and info.email and info.account.id


# -- failures --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("status_text", "message"), [("timeout", "Unknown task status: timeout"),
                                                       ("exploded", "Unknown task status: exploded"),
                                                       (None, "the model refused")])
def test_poller_ends_with_task_failed(oracle: Simulator, status_text: str | None, message: str) -> None:
    """RunAPI's poller ends on ``failed`` with the task's error and on any other status as unknown."""
    route = RouteResource(ProviderClient(**_options(oracle))._http, T2I)  # status typed by core's TaskResponse
    oracle.set_task_outcome(None, "failed", error="the model refused", status_text=status_text)
    with pytest.raises(TaskFailedError) as failed:
        route.run(model="gpt-image-2", prompt=PROMPT)
    assert failed.value.message == message
    details = failed.value.details
    assert details["status"] == (status_text or "failed") and "usage" not in details  # nothing charged
    assert failed.value.runapi_task_id == oracle.task_ids[-1]


def test_per_model_packages_refuse_a_status_outside_their_enum(oracle: Simulator) -> None:
    """The per-model packages type ``status`` as pending/processing/completed/failed: a ``canceled`` answer
    fails to parse (ValidationError) before their poller sees it."""
    oracle.set_task_outcome(None, "failed", error="canceled by the provider", status_text="canceled")
    with pytest.raises(ValidationError, match="Invalid status: canceled"):
        GptImage2Client(**_options(oracle)).text_to_image.run(model="gpt-image-2", prompt=PROMPT)


def test_create_error_names_the_created_task(oracle: Simulator) -> None:
    client = GptImage2Client(**_options(oracle))
    oracle.inject(Fault("create_error", status=502, method="POST", path_contains=T2I))
    before = oracle.tasks_created
    with pytest.raises(ServerError) as failed:
        client.text_to_image.create(model="gpt-image-2", prompt=PROMPT)  # no Idempotency-Key: not retried
    assert failed.value.status == 502
    assert failed.value.runapi_task_id == oracle.task_ids[-1] and oracle.tasks_created == before + 1
    # With a key the SDK retries the 502, and the retry is the same task, replayed.
    oracle.inject(Fault("create_error", status=502, method="POST", path_contains=T2I))
    key = RequestOptions(headers={"Idempotency-Key": f"oracle-{uuid.uuid4()}"})
    task = client.text_to_image.create(options=key, model="gpt-image-2", prompt=PROMPT)
    assert task.task_replayed is True and task.id == oracle.task_ids[-1] and oracle.tasks_created == before + 2
    assert task.runapi_task_id == task.id


def test_errors_carry_the_request_id(oracle: Simulator) -> None:
    client = GptImage2Client(**_options(oracle))
    with pytest.raises(ValidationError) as refused:
        client.text_to_image.create(model="gpt-image-2", prompt=PROMPT, output_resolution="8k")
    assert refused.value.status == 422 and refused.value.request_id
    assert refused.value.details["error"]["field"] == "output_resolution"
