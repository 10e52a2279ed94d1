"""`drip serve` sends a welcome at once: a signup wakes the scheduler, cheaply. A
burst of signups asks for one pass, not one each, and a signup that arrives while a pass is sending
still gets its welcome right after that pass, not at the next tick."""
from __future__ import annotations

import time

from sqlalchemy import func, select

from service.app import create_app
from service.core.models import DispatchPass
from service.scheduler import start_background

TICK = 120.0  # far beyond the test: only wakes (and the first run at start) make passes here


def passes(rt) -> int:
    with rt.sessions() as s:
        return s.scalar(select(func.count()).select_from(DispatchPass))


def wait_until(check, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_signups_wake_the_scheduler_once_per_burst_and_again_after_a_busy_pass(runtime, smtp) -> None:
    """The first signup's welcome arrives at once; one arriving while that (slow) pass sends also arrives
    long before the tick; ten signups in a burst cost a handful of passes, not ten."""
    scheduler, wake = start_background(runtime.dispatcher(), TICK)
    try:
        client = create_app(runtime=runtime, wake=wake).test_client()
        assert wait_until(lambda: passes(runtime) >= 1)  # the run at start
        smtp.handler.data_delay = 1.0  # the first welcome's pass stays busy for a second
        assert client.post("/signup", json={"email": "first@example.org"}).status_code == 201
        assert wait_until(lambda: passes(runtime) >= 1 and not smtp.handler.accepted, 5)
        time.sleep(0.3)  # that pass is now waiting on the slow server
        assert client.post("/signup", json={"email": "second@example.org"}).status_code == 201
        smtp.handler.data_delay = 0
        assert len(smtp.handler.wait_for(2, timeout=15)) == 2

        before = passes(runtime)
        for i in range(10):
            assert client.post("/signup", json={"email": f"burst{i}@example.org"}).status_code == 201
        assert len(smtp.handler.wait_for(12, timeout=15)) == 12
        time.sleep(0.5)
        assert passes(runtime) - before <= 5
    finally:
        scheduler.shutdown(wait=True)
