"""RUNAPI_MCP_CONFIRM_ABOVE_CENTS: the user says yes before a costly task, on both protocol eras.

The simulator quotes gpt-image-2 at 3 cents (1k), 6 cents (2k) and 12 cents (4k); the threshold here is 5.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import (
    ClientCapabilities,
    ElicitationCapability,
    ElicitRequestFormParams,
    ElicitRequestParams,
    ElicitResult,
    ErrorData,
    FormElicitationCapability,
    InputRequiredResult,
    InputResponses,
    UrlElicitationCapability,
)

from runapi_mcp.app import App, open_app
from runapi_mcp.catalog import get_catalog
from runapi_mcp.config import ConfigError, load_settings
from runapi_mcp.server.confirm import (
    INPUT_KEY,
    ConfirmationRefused,
    CostQuestion,
    SpendConfirmation,
    client_can_elicit,
    format_price,
    uses_input_required,
)
from runapi_mcp.simulator import Simulator
from tests.support import FAST_POLICY, make_settings, png_file, price_quotes, text_of, uploads, upstream_creates

pytestmark = pytest.mark.anyio

THRESHOLD = 5
ERAS = ("legacy", "2026-07-28")



class Asker:
    """An elicitation callback that answers every question the same way and keeps what it was asked."""

    def __init__(self, action: str = "accept", content: dict[str, Any] | None = None, *, fail: bool = False) -> None:
        self.action = action
        self.content = {"confirm": True} if content is None and action == "accept" else content
        self.fail = fail
        self.asked: list[ElicitRequestFormParams] = []

    async def __call__(self, context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult | ErrorData:
        assert isinstance(params, ElicitRequestFormParams)
        self.asked.append(params)
        if self.fail:
            return ErrorData(code=-32603, message="the form could not be shown")
        return ElicitResult(action=self.action, content=self.content)


@pytest.fixture
async def app(sim: Simulator, home: Path, inputs: Path) -> AsyncIterator[App]:
    async with open_app(make_settings(sim, home, inputs, confirm_above_cents=THRESHOLD), policy=FAST_POLICY) as app:
        yield app


# -- the setting ------------------------------------------------------------------------------------------
def test_the_setting_is_whole_cents_from_the_environment(home: Path) -> None:
    environ = {"RUNAPI_MCP_CONFIRM_ABOVE_CENTS": "25"}
    settings = load_settings({}, environ=environ, config_file=home / "none.json")
    assert settings.confirm_above_cents == 25
    assert load_settings({}, environ={}, config_file=home / "none.json").confirm_above_cents is None
    for bad in ("2.5", "-1", "ten"):
        with pytest.raises(ConfigError, match="RUNAPI_MCP_CONFIRM_ABOVE_CENTS"):
            load_settings({}, environ={"RUNAPI_MCP_CONFIRM_ABOVE_CENTS": bad}, config_file=home / "none.json")


# -- the logic, without a session ------------------------------------------------------------------------------
def question(cents: int | None = 12, resolution: str = "4k") -> CostQuestion:
    validated = get_catalog().validate(
        "generate", "gpt-image-2", prompt="a fox", image_count=0, options={"output_resolution": resolution}
    )
    return CostQuestion.of(validated, cents, THRESHOLD)


def test_who_is_asked_and_what_they_read() -> None:
    never, above = SpendConfirmation(None), SpendConfirmation(THRESHOLD)
    assert not never.wanted(10_000) and not never.wanted(None)
    assert not above.wanted(THRESHOLD) and not above.wanted(3) and above.wanted(THRESHOLD + 1)
    assert above.wanted(None)  # an unpriced task may cost anything
    assert format_price(1) == "$0.01 (1 cent)" and format_price(250) == "$2.50 (250 cents)"
    message = question().message()
    for fact in ("$0.12 (12 cents)", "gpt-image-2", "4k", "1 image", "RUNAPI_MCP_CONFIRM_ABOVE_CENTS"):
        assert fact in message, fact
    assert "unknown" in question(None).message()
    schema = question().request().params.requested_schema  # type: ignore[union-attr]
    assert schema["properties"]["confirm"]["type"] == "boolean"
    assert client_can_elicit(ClientCapabilities(elicitation=ElicitationCapability()))
    assert client_can_elicit(ClientCapabilities(elicitation=ElicitationCapability(form=FormElicitationCapability())))
    assert not client_can_elicit(ClientCapabilities(elicitation=ElicitationCapability(url=UrlElicitationCapability())))
    assert not client_can_elicit(ClientCapabilities()) and not client_can_elicit(None)
    assert uses_input_required("2026-07-28") and not uses_input_required("2025-11-25")
    assert not uses_input_required(None)


def test_an_answer_counts_only_for_the_question_it_answered() -> None:
    asked = question().input_required()
    assert list(asked.input_requests or {}) == [INPUT_KEY]
    yes: InputResponses = {INPUT_KEY: ElicitResult(action="accept", content={"confirm": True})}
    assert question().answer_from(yes, asked.request_state) == yes[INPUT_KEY]
    assert question().answer_from(yes, None) is None  # answered without being asked: ask
    assert question(13).answer_from(yes, asked.request_state) is None  # the price moved: ask again
    assert question().answer_from(yes, '{"v": 1, "q": "forged"}') is None
    assert question().answer_from(None, asked.request_state) is None


@pytest.mark.parametrize(
    ("action", "content", "why"),
    [
        ("decline", None, "declined"),
        ("cancel", None, "dismissed"),
        ("accept", {"confirm": False}, "unticked"),
        ("accept", {"confirm": "yes"}, "did not fit"),
        ("accept", {"confirm": 1}, "did not fit"),
    ],
)
def test_anything_but_an_accept_with_the_box_ticked_refuses(
    action: str, content: dict[str, Any] | None, why: str
) -> None:
    with pytest.raises(ConfirmationRefused, match=why) as caught:
        question().judge(action, content)
    assert "Nothing was uploaded, created or charged" in str(caught.value)
    question().judge("accept", {"confirm": True})  # the way through


def test_an_accept_without_the_box_takes_its_default_yes() -> None:
    """Hermes Agent (0.19) asks with approve/deny and answers an approval as ``accept`` with no fields: the
    form's default (ticked) is the answer, as JSON Schema's ``default`` says."""
    schema = question().request().params.model_dump(by_alias=True)["requestedSchema"]
    assert schema["properties"]["confirm"]["default"] is True
    question().judge("accept", {})
    question().judge("accept", None)


# -- handshake era: elicitation/create in the middle of the call -------------------------------------------------
@pytest.mark.parametrize("mode", ERAS)
async def test_an_accepted_question_creates_the_task_once(app: App, sim: Simulator, mode: str) -> None:
    asker = Asker()
    async with Client(app.server, mode=mode, elicitation_callback=asker) as client:
        result = await client.call_tool("generate_image", {"prompt": "a fox", "output_resolution": "2k", "wait": False})
    assert not result.is_error, text_of(result)
    assert result.structured_content and result.structured_content["task_id"]
    assert result.structured_content["price_cents"] == 6
    [params] = asker.asked
    for fact in ("$0.06 (6 cents)", "gpt-image-2", "2k", "1 image"):
        assert fact in params.message, fact
    assert params.requested_schema["properties"]["confirm"]["type"] == "boolean"
    assert len(upstream_creates(sim)) == 1
    # The 2026 retry runs the tool again from the top: quoted again, created once.
    assert len(price_quotes(sim)) == (2 if mode != "legacy" else 1)


@pytest.mark.parametrize("mode", ERAS)
@pytest.mark.parametrize(
    ("action", "content", "fail"),
    [("decline", None, False), ("cancel", None, False), ("accept", {"confirm": False}, False), ("accept", None, True)],
    ids=["decline", "cancel", "unticked", "failed"],
)
async def test_no_yes_uploads_and_creates_nothing(
    app: App, sim: Simulator, inputs: Path, mode: str, action: str, content: dict[str, Any] | None, fail: bool
) -> None:
    asker = Asker(action, content, fail=fail)
    image = str(png_file(inputs / "photo.png"))  # a local file: accepting would upload it first
    arguments = {"prompt": "make it night", "images": [image], "output_resolution": "4k"}
    async with Client(app.server, mode=mode, elicitation_callback=asker) as client:
        if fail and mode != "legacy":
            # 2026 era: the client could not answer, so it never calls again; the first round created nothing.
            with pytest.raises(MCPError, match="could not be shown"):
                await client.call_tool("edit_image", arguments)
        else:
            result = await client.call_tool("edit_image", arguments)
            assert result.is_error
            text = text_of(result)
            assert text.startswith("Not created") and "Nothing was uploaded, created or charged" in text, text
            assert "$0.12 (12 cents)" in text and "gpt-image-2" in text
        listed = await client.call_tool("list_tasks", {})
    assert len(asker.asked) == 1
    assert upstream_creates(sim) == [] and uploads(sim) == []
    assert listed.structured_content and listed.structured_content["tasks"] == []


@pytest.mark.parametrize("mode", ERAS)
async def test_a_client_without_elicitation_is_not_asked(app: App, sim: Simulator, mode: str) -> None:
    async with Client(app.server, mode=mode) as client:
        result = await client.call_tool("generate_image", {"prompt": "a fox", "output_resolution": "4k", "wait": False})
    assert not result.is_error, text_of(result)
    assert len(upstream_creates(sim)) == 1


@pytest.mark.parametrize("mode", ERAS)
async def test_a_quote_under_the_threshold_is_not_asked(app: App, sim: Simulator, mode: str) -> None:
    asker = Asker("decline")
    async with Client(app.server, mode=mode, elicitation_callback=asker) as client:
        result = await client.call_tool("generate_image", {"prompt": "a fox", "output_resolution": "1k", "wait": False})
    assert not result.is_error, text_of(result)
    assert asker.asked == [] and len(upstream_creates(sim)) == 1


async def test_without_the_setting_nobody_is_asked(sim: Simulator, home: Path, inputs: Path) -> None:
    asker = Asker("decline")
    async with (
        open_app(make_settings(sim, home, inputs), policy=FAST_POLICY) as app,
        Client(app.server, mode="legacy", elicitation_callback=asker) as client,
    ):
        result = await client.call_tool("generate_image", {"prompt": "a fox", "output_resolution": "4k", "wait": False})
    assert not result.is_error and asker.asked == []


async def test_the_2026_question_is_an_input_required_result_bound_to_its_call(app: App, sim: Simulator) -> None:
    """The raw rounds: the question, a forged answer without our state, then the real retry."""
    asker = Asker()
    arguments = {"prompt": "a fox", "output_resolution": "2k", "wait": False}
    yes: InputResponses = {INPUT_KEY: ElicitResult(action="accept", content={"confirm": True})}
    async with Client(app.server, mode="2026-07-28", elicitation_callback=asker) as client:
        session = client.session
        first = await session.call_tool("generate_image", arguments, allow_input_required=True)
        assert isinstance(first, InputRequiredResult) and first.request_state
        request = (first.input_requests or {})[INPUT_KEY]
        assert request.method == "elicitation/create" and "$0.06" in json.dumps(request.model_dump())
        # An answer nobody was asked for (no state) is not a yes: the question comes again.
        forged = await session.call_tool("generate_image", arguments, input_responses=yes, allow_input_required=True)
        assert isinstance(forged, InputRequiredResult)
        assert upstream_creates(sim) == []
        done = await session.call_tool(
            "generate_image", arguments, input_responses=yes, request_state=first.request_state,
            allow_input_required=True,
        )  # fmt: skip
    assert not isinstance(done, InputRequiredResult) and not getattr(done, "is_error", True)
    assert len(upstream_creates(sim)) == 1
