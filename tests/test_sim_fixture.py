"""The ``sim`` fixture: every test gets the session simulator as new, whatever the test before it did.

The two tests run in this order (one file runs on one worker, top to bottom): the first leaves the simulator
as dirty as a test can, the second must see none of it. A queued outcome used to leak this way: the next
test's first task was held running and its call waited out its whole deadline.
"""

from __future__ import annotations

import httpx

from runapi_mcp.simulator import Fault, Simulator, SimulatorConfig
from tests.support import SIM_KEY, TIME_SCALE

T2I = "/api/v1/gpt_image_2/text_to_image"
HEADERS = {"Authorization": f"Bearer {SIM_KEY}"}


def test_a_test_leaves_the_simulator_dirty(sim: Simulator) -> None:
    with httpx.Client(base_url=sim.base_url, headers=HEADERS) as client:
        assert client.post(T2I, json={"model": "gpt-image-2", "prompt": "left behind"}).status_code == 200
    sim.set_task_outcome(None, "running")
    sim.inject(Fault("status", status=503, times=None, path_contains="/text_to_image"))
    sim.set_catalog_status("gpt-image-2", "maintenance")
    sim.configure(status_retry_after=30.0, id_style="task_id")
    sim.set_balance(0)
    assert sim.task_ids and sim.requests and sim.faults


def test_the_next_test_gets_it_as_new(sim: Simulator) -> None:
    assert sim.task_ids == [] and sim.tasks_created == 0 and sim.requests == [] and sim.faults == []
    assert sim.config == SimulatorConfig(api_key=SIM_KEY, time_scale=TIME_SCALE)
    assert sim.balance_cents == sim.config.initial_balance_cents
    with httpx.Client(base_url=sim.base_url, headers=HEADERS) as client:
        created = client.post(T2I, json={"model": "gpt-image-2", "prompt": "a clean start"})
        assert created.status_code == 200, created.text  # no fault, no maintenance, no empty balance
        task_id = created.json()["id"]
    assert sim.completed_at(task_id) is not None  # the outcome queued before is gone: it is not held running
