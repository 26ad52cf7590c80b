"""A RunAPI simulator: a real HTTP server on loopback that follows RunAPI's contract for every image action
in the catalog. Used by the tests, the benchmarks and the offline demo (no machine here reaches RunAPI).

    with Simulator(SimulatorConfig(api_key="sk-sim-test", time_scale=0.02)) as sim:
        base_url = sim.base_url
        sim.inject(Fault("status", status=429, retry_after=1.0, method="POST"))
        ...

Faults reproduce a hostile upstream too (see ``Fault``): non-images, decompression bombs, huge pictures,
trickled bodies, redirects anywhere, invalid Unicode, echoed keys, image URLs pointing anywhere, odd JSON.
``ImageHost`` stands in for a foreign host on a second loopback port and records whether it was hit.

Pictures are rendered with Pillow: the prompt, readable, on a colourful background derived from it.

It answers as RunAPI does today (runapi-core 0.10.1, whose SDK drives it in tests/test_oracle_sdk.py): price
quotes with the create fields nested under ``params``; local files uploaded in three steps (``POST
/api/v1/files/prepare``, ``PUT`` to its ``/storage/`` URL with the prepared headers and no key, ``POST
/api/v1/files/confirm``) and expiring after ``SimulatorConfig.upload_lifetime_s``; price schedules with a
``catalog_status`` per model (``Simulator.set_catalog_status``) behind a strong ETag; ``X-RunAPI-Task-Id`` on
every answer about a task, ``task_replayed`` on replayed creates, ``usage`` on completed tasks. With
``SimulatorConfig.legacy`` (or ``Simulator.configure(legacy=True)``, ``POST /_sim/config``) it answers the older
way: flat quotes, schedules without ``catalog_status``, multipart uploads and no prepare/confirm.
"""

from runapi_mcp.simulator._app import PLANTED_STRINGS
from runapi_mcp.simulator._host import HostRequest, ImageHost
from runapi_mcp.simulator._models import (
    CatalogStatus,
    Fault,
    FaultBody,
    FaultKind,
    FaultWhere,
    IdStyle,
    LoggedRequest,
    SentCallback,
    SimulatorConfig,
    TaskOutcome,
)
from runapi_mcp.simulator._server import Simulator, serve

__all__ = [
    "PLANTED_STRINGS",
    "CatalogStatus",
    "Fault",
    "FaultBody",
    "FaultKind",
    "FaultWhere",
    "HostRequest",
    "IdStyle",
    "ImageHost",
    "LoggedRequest",
    "SentCallback",
    "Simulator",
    "SimulatorConfig",
    "TaskOutcome",
    "serve",
]
