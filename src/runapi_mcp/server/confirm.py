"""Asking the user before a costly task: ``RUNAPI_MCP_CONFIRM_ABOVE_CENTS``.

A task quoted above the threshold is shown to the user (price, model, resolution, how many images) with one
checkbox, ticked, after the quote and before anything is uploaded or created. Only a user who accepts lets
the task go ahead; a decline, a dismissal, an unticked box or a question that could not be asked after all
creates nothing, and the call ends with an error result saying so (see :class:`ConfirmationRefused`).

The box is ticked by default because an accept that leaves it out means the default (JSON Schema's
``default``), and some clients show the question as approve/deny with no form at all: Hermes Agent 0.19
answers "[o]nce" with ``accept`` and empty content (``bench/hermes_check.py`` runs its own client against
this server). A form client shows the box ticked; unticking it, like declining, creates nothing.

The question travels the way the negotiated protocol carries it:

- handshake era (up to 2025-11-25): an ``elicitation/create`` request in the middle of the call
  (``ctx.elicit``), to clients that declared ``capabilities.elicitation`` (form mode);
- 2026-07-28: the call answers ``input_required`` with the question; the client asks the user and calls
  again with the same arguments, the answer in ``inputResponses`` and our ``requestState`` echoed. The
  retry runs the tool from the top (validation and quote included) and the answer counts only if it
  answers the very question the retry would ask now (same price, model, resolution, outputs): the state
  carries a digest of it. The SDK seals that state and binds it to the tool, its arguments and the
  caller, so a client can neither forge it nor replay it for another call.

A client that declared no elicitation is not asked (the task goes ahead as without the setting): the
setting asks whoever can be asked, it is no cap (``RUNAPI_MCP_MAX_SPEND_CENTS`` is the cap).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from mcp.server.elicitation import AcceptedElicitation, render_elicitation_schema
from mcp.server.mcpserver import Context
from mcp.types import (
    ClientCapabilities,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequiredResult,
    InputResponses,
)
from mcp_types.version import is_version_at_least
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runapi_mcp.catalog import OUTPUT_COUNT_FIELDS, SPLIT_IMAGES_OUTPUTS, ValidatedRequest
from runapi_mcp.errors import UserError
from runapi_mcp.wording import count

log = logging.getLogger("runapi_mcp.server.confirm")

CONFIRM_VARIABLE = "RUNAPI_MCP_CONFIRM_ABOVE_CENTS"
# The key of our one question in ``inputRequests``/``inputResponses`` (2026 era).
INPUT_KEY = "runapi_confirm_cost"
# The first protocol revision that asks through an ``input_required`` result instead of a request.
INPUT_REQUIRED_SINCE = "2026-07-28"
_STATE_VERSION = 1
# Body fields that say how big the picture is, in the order they are looked for.
_SIZE_FIELDS = ("output_resolution", "size", "resolution")


class CostConfirmation(BaseModel):
    """The form the user fills in: one checkbox, ticked; an accept without it means yes (see the module)."""

    # Strict: only a real true is a yes ("yes", 1 or "true" from a sloppy client is no answer to the form).
    model_config = ConfigDict(strict=True)

    confirm: bool = Field(
        default=True,
        title="Create and pay",
        description="Create the task and pay the quoted price (untick, or decline, to create nothing)",
    )


class ConfirmationRefused(UserError, ValueError):
    """The user did not confirm a costly task, or could not be asked after all: nothing was uploaded or
    created. Its text is the whole answer to the call (an error result: the tool promises a task, and
    there is none)."""


def format_price(cents: int | None) -> str:
    """``$0.12 (12 cents)``; an unknown price says so."""
    if cents is None:
        return "unknown (RunAPI gave no price quote)"
    return f"${cents / 100:.2f} ({count(cents, 'cent')})"


def client_can_elicit(capabilities: ClientCapabilities | None) -> bool:
    """Whether the client takes a form elicitation: a bare ``elicitation: {}`` (from before modes existed)
    counts as form support, a URL-only client does not (the SDK's own reading)."""
    elicitation = capabilities.elicitation if capabilities is not None else None
    return elicitation is not None and (elicitation.form is not None or elicitation.url is None)


def uses_input_required(protocol_version: str | None) -> bool:
    """Whether this request asks through an ``input_required`` result (2026-07-28 and later)."""
    return protocol_version is not None and is_version_at_least(protocol_version, INPUT_REQUIRED_SINCE)


def _outputs(request: ValidatedRequest) -> str:
    body, spec = request.body, request.model
    count: int | None = None
    for name in OUTPUT_COUNT_FIELDS:
        if name in spec.fields:
            value = body.get(name, spec.fields[name].default)
            if isinstance(value, int) and not isinstance(value, bool):
                count = value
            break
    if body.get("include_split_images") is True:
        count = SPLIT_IMAGES_OUTPUTS  # the grid and its four quadrants
    if count is None:
        most = spec.max_outputs
        return "1 image" if most == 1 else f"up to {most} images"
    return f"{count} image{'' if count == 1 else 's'}"


def _size(request: ValidatedRequest) -> str:
    body = request.body
    for name in _SIZE_FIELDS:
        if name in body:
            return str(body[name])
    factor = request.model.upscale_field
    if factor is not None and factor.name in body:
        return f"{body[factor.name]}x upscale"
    return "the model's default size"


@dataclass(frozen=True)
class CostQuestion:
    """What the user is asked about one task, and how the answer is judged."""

    cents: int | None
    model: str
    action: str
    resolution: str
    outputs: str
    aspect_ratio: str | None
    threshold: int

    @classmethod
    def of(cls, request: ValidatedRequest, cents: int | None, threshold: int) -> CostQuestion:
        ratio = request.body.get("aspect_ratio")
        return cls(
            cents=cents,
            model=request.model.slug,
            action=request.action.endpoint,
            resolution=_size(request),
            outputs=_outputs(request),
            aspect_ratio=str(ratio) if ratio is not None else None,
            threshold=threshold,
        )

    @property
    def what(self) -> str:
        """``gpt-image-2 text_to_image, 4k, 16:9, 1 image``."""
        parts = [f"{self.model} {self.action}", self.resolution]
        if self.aspect_ratio is not None:
            parts.append(self.aspect_ratio)
        parts.append(self.outputs)
        return ", ".join(parts)

    def message(self) -> str:
        return (
            f"Create this image task for {format_price(self.cents)}? {self.what}. "
            f"Tasks quoted above {format_price(self.threshold)} are confirmed first ({CONFIRM_VARIABLE}); "
            "nothing is uploaded, created or charged unless you accept."
        )

    def request(self) -> ElicitRequest:
        """The form, the same on both eras."""
        schema = render_elicitation_schema(CostConfirmation)
        return ElicitRequest(params=ElicitRequestFormParams(message=self.message(), requested_schema=schema))

    def digest(self) -> str:
        """Pins an answer to the exact question it was given for (a new price is a new question)."""
        params = self.request().params.model_dump(mode="json", by_alias=True, exclude_none=True)
        raw = hashlib.sha256(json.dumps(params, sort_keys=True, separators=(",", ":")).encode()).digest()
        return base64.urlsafe_b64encode(raw[:16]).decode().rstrip("=")

    def input_required(self) -> InputRequiredResult:
        """The 2026-era first round: the question, and the state its answer is checked against."""
        state = json.dumps({"v": _STATE_VERSION, "q": self.digest()}, separators=(",", ":"))
        return InputRequiredResult(input_requests={INPUT_KEY: self.request()}, request_state=state)

    def answer_from(self, responses: InputResponses | None, state: str | None) -> ElicitResult | None:
        """The 2026-era answer to exactly this question, or None when it has not been asked yet (or was
        asked with another price: then it is asked again). The state is ours: the SDK has unsealed it."""
        answer = (responses or {}).get(INPUT_KEY)
        if answer is None or state is None:
            return None
        try:
            asked = json.loads(state)
        except ValueError:
            return None
        if not isinstance(asked, dict) or asked.get("v") != _STATE_VERSION or asked.get("q") != self.digest():
            log.info("a cost confirmation answered another question (the quote changed?): asking again")
            return None
        if not isinstance(answer, ElicitResult):
            raise self.refused("the client answered the question with something other than the form")
        return answer

    def judge(self, action: str, content: Any) -> None:
        """Let the task through only on an accepted form with the box ticked; else raise
        :class:`ConfirmationRefused`."""
        if action == "decline":
            raise self.refused("the user declined it")
        if action != "accept":
            raise self.refused("the user dismissed the question")
        try:
            confirmed = CostConfirmation.model_validate(content if content is not None else {}).confirm
        except ValidationError:
            raise self.refused("the answer did not fit the form") from None
        if not confirmed:
            raise self.refused("the user left 'Create and pay' unticked")

    def refused(self, why: str) -> ConfirmationRefused:
        return ConfirmationRefused(
            f"Not created: this task needs the user's confirmation ({self.what}, quoted "
            f"{format_price(self.cents)}; {CONFIRM_VARIABLE} is {self.threshold}) and {why}. Nothing was "
            "uploaded, created or charged. Do not call again unless the user asks for it."
        )


class SpendConfirmation:
    """Asks before tasks quoted above ``above_cents`` (None: never asks)."""

    def __init__(self, above_cents: int | None) -> None:
        self.above_cents = above_cents

    def wanted(self, cents: int | None) -> bool:
        """Whether a task quoted ``cents`` needs the user's yes. One RunAPI could not price may cost
        anything, so it is asked about too."""
        return self.above_cents is not None and (cents is None or cents > self.above_cents)

    async def check(
        self, ctx: Context[Any, Any], request: ValidatedRequest, cents: int | None
    ) -> InputRequiredResult | None:
        """None: go ahead. An ``InputRequiredResult``: return it as the call's answer (2026 era, the
        question is out). Raises :class:`ConfirmationRefused` when the task must not be created."""
        if self.above_cents is None or not self.wanted(cents):
            return None
        if not client_can_elicit(ctx.client_capabilities):
            log.info("a task quoted %s is above %s; the client cannot be asked", cents, CONFIRM_VARIABLE)
            return None
        question = CostQuestion.of(request, cents, self.above_cents)
        if uses_input_required(ctx.protocol_version):
            answer = question.answer_from(ctx.input_responses, ctx.request_state)
            if answer is None:
                return question.input_required()
            question.judge(answer.action, answer.content)
            return None
        if not ctx.session.can_send_request:
            # A handshake-era connection that cannot carry a request to the client (stateless HTTP) is a
            # client that cannot be asked.
            log.info("a task quoted %s is above %s but this connection cannot ask: not asked", cents, CONFIRM_VARIABLE)
            return None
        try:
            outcome = await ctx.elicit(question.message(), CostConfirmation)
        except Exception as exc:  # an error answer, a broken connection, a malformed form: no yes, no task
            log.warning("asking for a cost confirmation failed: %s", exc)
            raise question.refused(f"asking failed ({type(exc).__name__})") from None
        content = outcome.data.model_dump() if isinstance(outcome, AcceptedElicitation) else None
        question.judge(outcome.action, content)
        return None
