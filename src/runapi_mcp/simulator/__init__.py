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
