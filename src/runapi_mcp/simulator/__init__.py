"""A RunAPI simulator: a real HTTP server on loopback that follows RunAPI's contract for every image action
in the catalog. Used by the tests, the benchmarks and the offline demo (no machine here reaches RunAPI).

    with Simulator(SimulatorConfig(api_key="sk-sim-test", time_scale=0.02)) as sim:
        base_url = sim.base_url
        sim.inject(Fault("status", status=429, retry_after=1.0, method="POST"))
        ...

Pictures are rendered with Pillow: the prompt, readable, on a colourful background derived from it.
"""

from runapi_mcp.simulator._models import (
    Fault,
    FaultKind,
    IdStyle,
    LoggedRequest,
    SimulatorConfig,
    TaskOutcome,
)
from runapi_mcp.simulator._server import Simulator, serve

__all__ = [
    "Fault",
    "FaultKind",
    "IdStyle",
    "LoggedRequest",
    "Simulator",
    "SimulatorConfig",
    "TaskOutcome",
    "serve",
]
