"""What a task costs: RunAPI's quote before the create, and the optional daily spend cap.

Every task is quoted before anything is uploaded or created (``POST /api/v1/price_quotes``), and the
quote is recorded on the task. Without a cap a failed quote only costs the price display (logged,
recorded as unknown); with ``RUNAPI_MCP_MAX_SPEND_CENTS`` set, a task whose quote would take today's
spend (UTC) past the cap is refused, and so is one that cannot be quoted: the cap cannot be checked.

Today's spend is what the task store recorded (quotes of today's tasks that did not fail), plus the
quotes of tasks admitted but not yet recorded, which the store holds (``TaskStore.hold_spend``): the
check and the hold are one step in the store, so two calls at once, in this process or in another
instance sharing the store, cannot both slip under the cap. With per-user tokens each user has a day of
their own: the cap (or the user's own, from ``RUNAPI_MCP_USER_SPEND_CENTS``) applies to what that user's
tasks cost.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from runapi_mcp.client import RunAPIClient, RunAPIError
from runapi_mcp.clock import SYSTEM_CLOCK, Clock
from runapi_mcp.errors import UserError
from runapi_mcp.tasks import LOCAL_OWNER, HeldSpend, TaskStore, current_owner
from runapi_mcp.wording import count

log = logging.getLogger("runapi_mcp.server.cost")

MAX_SPEND_VARIABLE = "RUNAPI_MCP_MAX_SPEND_CENTS"
# How long an admitted task's quote is held while its record is not stored yet (the block of `admit` up to
# the record's write: confirmation, uploads). Past it, a hold left by an instance that died stops counting.
HOLD_S = 600.0


class SpendLimitError(UserError, ValueError):
    """A task refused by the daily spend cap (or because the cap could not be checked); nothing was sent."""


@dataclass(frozen=True)
class Quote:
    """RunAPI's price for one task, or why there is none."""

    cents: int | None
    problem: str | None = None


def start_of_day_utc(now: float) -> float:
    """Epoch seconds of the last UTC midnight at or before ``now``."""
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


def _until_tomorrow(now: float) -> str:
    tomorrow = datetime.fromtimestamp(start_of_day_utc(now), UTC) + timedelta(days=1)
    minutes = max(1, int((tomorrow.timestamp() - now) // 60))
    return f"{minutes // 60}h{minutes % 60:02d}m"


class SpendGuard:
    """Quotes tasks and keeps today's spend under ``cap_cents`` (None: no cap)."""

    def __init__(
        self,
        client: RunAPIClient,
        store: TaskStore,
        cap_cents: int | None,
        *,
        user_caps: Mapping[str, int] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._client = client
        self._store = store
        self._cap_cents = cap_cents
        self._user_caps = dict(user_caps or {})
        self._clock = clock

    @property
    def cap_cents(self) -> int | None:
        """The daily cap of the current request's user (None: no cap)."""
        owner = current_owner.get()
        return self._user_caps.get(owner, self._cap_cents) if owner != LOCAL_OWNER else self._cap_cents

    async def spent_today(self) -> int:
        """Today's (UTC) spend of the current request's user as this server recorded it, in cents."""
        return await self._store.spent_cents(start_of_day_utc(self._clock.time()), current_owner.get())

    async def quote(self, service: str, action: str, body: Mapping[str, Any]) -> Quote:
        """RunAPI's quote for a create body; a failure is returned (and logged), never raised."""
        try:
            model = body.get("model")
            params = {k: v for k, v in body.items() if k != "model"}
            answer = await self._client.quote_price(
                service, action, model=model if isinstance(model, str) else None, params=params
            )
        except RunAPIError as exc:
            log.warning("no price quote for %s/%s: %s", service, action, exc)
            return Quote(None, str(exc))
        if answer.reservation_amount_cents is None:
            log.warning("the price quote for %s/%s named no amount", service, action)
            return Quote(None, "RunAPI's quote named no amount")
        return Quote(answer.reservation_amount_cents)

    @asynccontextmanager
    async def admit(self, quote: Quote) -> AsyncIterator[HeldSpend | None]:
        """Let one task through, or raise :class:`SpendLimitError`. The block gets the hold that keeps its
        quote counted as spent (None: no cap), so a second call at the same time sees it.
        The task's record must be written with it (``TaskManager.submit(spend_hold=...)``): the write
        drops the hold in the transaction that makes the recorded price count. (Dropped after the write, the
        quote would count twice meanwhile, the price and the hold: while the create went out, another call
        the cap still allows would be refused.) A block that ends with no record written with the hold
        (unconfirmed, an upload failed, the write failed) gives the hold back; after a write that dropped it
        (``HeldSpend.recorded``) there is nothing to give back, and no round trip to the store is made."""
        cap = self.cap_cents
        if cap is None:
            yield None
            return
        if quote.cents is None:
            raise SpendLimitError(
                f"Refused: {MAX_SPEND_VARIABLE} caps spending at {count(cap, 'cent')} per UTC day, but RunAPI gave no "
                f"price quote for this task ({quote.problem or 'no reason given'}), so the cap cannot be "
                "checked. Nothing was uploaded or created. Try again, or unset the cap."
            )
        now = self._clock.time()
        hold = await self._store.hold_spend(
            current_owner.get(), since=start_of_day_utc(now), cents=quote.cents, cap_cents=cap, ttl_s=HOLD_S
        )
        if not hold.admitted or hold.hold_id is None:
            spent = hold.spent_cents
            raise SpendLimitError(
                f"Refused: this task would pass the daily spend cap. {MAX_SPEND_VARIABLE} is {count(cap, 'cent')} per "
                f"UTC day; {count(spent, 'cent')} spent today + {count(quote.cents, 'cent')} quoted for this "
                f"task = {count(spent + quote.cents, 'cent')}. Nothing was uploaded or created. The day resets at "
                f"00:00 UTC (in {_until_tomorrow(now)}), or raise the cap."
            )
        held = HeldSpend(hold.hold_id)
        try:
            yield held
        finally:
            if not held.recorded:
                with anyio.CancelScope(shield=True):  # a cancelled call still gives its hold back
                    await self._store.release_spend(held.hold_id)
