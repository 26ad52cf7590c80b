"""Which models RunAPI will run right now: its price schedules' ``catalog_status``, shared by every session.

RunAPI marks each model/action ``active``, ``maintenance`` or ``disabled`` in ``GET /api/v1/price_schedules``.
A call to a model it has taken out would be refused upstream at best, after the quote and the uploads; so
the schedules are read once at start and again whenever they are older than ``max_age_s`` when a call needs
them, with the ETag of the last answer (an unchanged table is a bodiless 304). Concurrent callers share one
read. When RunAPI cannot be asked (offline, an error), the last table stands, and with none every model is
taken as callable: RunAPI validates each create itself, and a stale "maintenance" must not block a model
that is back.

The schedules also list what this version's catalog does not know (a model RunAPI added since): those are
shown as available upstream, not callable here, until a release carries their contract.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio

from runapi_mcp.catalog import ActionSpec, Catalog, CatalogError
from runapi_mcp.client import PriceSchedule, PriceSchedules, RunAPIClient, RunAPIError
from runapi_mcp.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("runapi_mcp.availability")

# Fresh enough: RunAPI changes a model's status rarely, and a conditional read is cheap.
DEFAULT_MAX_AGE_S = 300.0
UNAVAILABLE = frozenset({"maintenance", "disabled"})


def _norm(name: str | None) -> str:
    return (name or "").strip().lower().replace("-", "_").replace(".", "_")


@dataclass(frozen=True)
class UpstreamModel:
    """A model/action RunAPI lists that this version's catalog has no contract for."""

    service: str
    action: str
    model: str | None
    catalog_status: str


class Availability:
    """RunAPI's word on each model/action, read through :meth:`refresh` (conditional, single-flight)."""

    def __init__(
        self,
        client: RunAPIClient,
        catalog: Catalog,
        *,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._client = client
        self._catalog = catalog
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = anyio.Lock()
        self._table: PriceSchedules | None = None
        self._read_at: float | None = None
        self._status: dict[tuple[str, str, str], str] = {}  # (service, action, model or "") -> catalog_status

    @property
    def table(self) -> PriceSchedules | None:
        """The last schedules read (None before the first)."""
        return self._table

    @property
    def known(self) -> bool:
        """Whether RunAPI's schedules have been read at least once."""
        return self._table is not None

    async def refresh(self, *, force: bool = False) -> None:
        """Read the schedules if older than ``max_age_s`` (or ``force``); a failure keeps the last table."""
        if not force and not self._stale():
            return
        async with self._lock:
            if not force and not self._stale():
                return  # another caller read them while this one waited
            try:
                answer = await self._client.price_schedules(etag=self._table.etag if self._table else None)
            except RunAPIError as exc:
                log.warning("could not read RunAPI's price schedules (%s); keeping what was known", exc)
                self._read_at = self._clock.monotonic()  # not again at once: the next call after max_age_s tries
                return
            self._read_at = self._clock.monotonic()
            if answer is not None:  # None: 304, the table holds
                self.use(answer)

    def _stale(self) -> bool:
        return self._read_at is None or self._clock.monotonic() - self._read_at >= self._max_age_s

    def use(self, answer: PriceSchedules) -> None:
        """Take ``answer`` as RunAPI's current schedules (what refresh does with a fresh read)."""
        self._table = answer
        self._status = {_key(row): _status(row) for row in answer.rows}
        marked = [f"{m or s}/{a} ({st})" for (s, a, m), st in self._status.items() if st in UNAVAILABLE]
        if marked:
            log.info("RunAPI marks unavailable: %s", ", ".join(marked))

    def status(self, action: ActionSpec, slug: str) -> str | None:
        """RunAPI's ``catalog_status`` for ``slug`` on ``action``; None when the schedules do not say."""
        service, endpoint = _norm(action.service), _norm(action.endpoint)
        model = slug.strip().lower() if action.models[slug].send_model else ""
        return self._status.get((service, endpoint, model)) or self._status.get((service, endpoint, ""))

    def unavailable(self) -> dict[str, str]:
        """Each catalog model RunAPI has taken out, with why: ``{"gpt-image-2": "maintenance on edit_image"}``."""
        out: dict[str, list[str]] = {}
        for action in self._catalog.actions:
            for slug in action.models:
                status = self.status(action, slug)
                if status in UNAVAILABLE:
                    out.setdefault(slug, []).append(f"{status} on {action.endpoint}")
        return {slug: ", ".join(reasons) for slug, reasons in out.items()}

    def upstream_only(self) -> list[UpstreamModel]:
        """What RunAPI lists that this catalog lacks (by route and model): callable upstream, not here yet."""
        if self._table is None:
            return []
        ours = {
            (_norm(a.service), _norm(a.endpoint), slug if spec.send_model else "")
            for a in self._catalog.actions
            for slug, spec in a.models.items()
        }
        routes = {(s, a) for s, a, _ in ours}
        seen: set[tuple[str, str, str]] = set()
        out = []
        for row in self._table.rows:
            key = _key(row)
            if key in ours or key in seen or (not key[2] and key[:2] in routes):
                continue
            seen.add(key)
            out.append(UpstreamModel(row.service, row.action, row.model, _status(row)))
        return out

    async def check(self, action: ActionSpec, slug: str) -> None:
        """Refuse (as a :class:`CatalogError` on ``model``) a model RunAPI marks maintenance or disabled,
        before anything is quoted, uploaded or created."""
        await self.refresh()
        status = self.status(action, slug)
        if status not in UNAVAILABLE:
            return
        alternatives = [
            s
            for a in self._catalog.actions
            if a.endpoint == action.endpoint
            for s in a.models
            if s != slug and self.status(a, s) not in UNAVAILABLE
        ][:5]
        hint = f"; models on {action.endpoint} that RunAPI runs now: {', '.join(alternatives)}" if alternatives else ""
        raise CatalogError(
            f"'model' {slug!r} is marked {status} by RunAPI for {action.endpoint}: RunAPI will not run it now. "
            f"Nothing was uploaded or created{hint}. list_models shows what is available.",
            field="model",
            allowed=alternatives,
        )


def _key(row: PriceSchedule) -> tuple[str, str, str]:
    return _norm(row.service), _norm(row.action), (row.model or "").strip().lower()


def _status(row: PriceSchedule) -> str:
    return row.catalog_status.strip().lower() or "active"
