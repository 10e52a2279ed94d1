"""Per-domain send limits and warm-up, shared by every worker through the database: two dispatchers, a
controllable clock, real SMTP; messages over the allowance stay queued with no attempt counted."""
from __future__ import annotations

import threading
from dataclasses import replace
from datetime import date, timedelta

import pytest
from conftest import at
from sqlalchemy import select

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.core.config import ConfigError, SendLimits, Settings
from service.core.models import Message
from service.runtime import build_runtime

T0 = at("2026-11-24T10:05:00")


@pytest.fixture
def limited(settings):
    built = []

    def make(limits: str, warmup: str = ""):
        rt = build_runtime(replace(settings, send_limits=SendLimits.parse(limits, warmup)))
        built.append(rt)
        return rt
    yield make
    for rt in built:
        rt.sessions.kw["bind"].dispose()


def enroll_many(rt, n: int) -> None:
    for i in range(n):
        data = parse_signup({"email": f"reader{i}@example.com"}, campaigns=rt.campaigns,
                            default_campaign=rt.settings.default_campaign)
        with rt.sessions() as s, s.begin():
            signup(s, data, campaign=rt.campaigns[data.campaign], meta=ConsentMeta("json"), now=T0)


def statuses(rt) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    with rt.sessions() as s:
        for m in s.scalars(select(Message)):
            out.setdefault(m.status, []).append(m.attempts)
    return out


def test_two_dispatchers_share_the_hourly_and_daily_allowance(limited, smtp) -> None:
    """hour=3, day=5 across two workers running at the same moment: 3 this hour, 2 the next, 0 after that
    until the next UTC day; waiting messages stay queued with 0 attempts."""
    rt = limited("hour=3,day=5")
    enroll_many(rt, 8)
    a, b = rt.dispatcher(worker_id="A"), rt.dispatcher(worker_id="B")
    barrier = threading.Barrier(2)
    sent: dict[str, int] = {}

    def run(d, name: str) -> None:
        barrier.wait()
        sent[name] = d.run_pass(T0).sent
    threads = [threading.Thread(target=run, args=(d, n)) for d, n in ((a, "A"), (b, "B"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sent["A"] + sent["B"] == 3 and len(smtp.handler.accepted) == 3
    assert statuses(rt) == {"sent": [1, 1, 1], "queued": [0, 0, 0, 0, 0]}
    assert b.run_pass(T0 + timedelta(minutes=50)).sent == 0  # same clock hour
    assert a.run_pass(T0 + timedelta(hours=1)).sent + b.run_pass(T0 + timedelta(hours=1)).sent == 2
    assert a.run_pass(T0 + timedelta(hours=2)).sent == 0  # day limit 5 reached
    assert sorted(statuses(rt)["queued"]) == [0, 0, 0]
    assert b.run_pass(at("2026-11-25T00:10:00")).sent == 3


def test_warm_up_doubles_the_daily_cap(limited, smtp) -> None:
    """DRIP_WARMUP=start:2 allows 2 on the first day, 4 on the second, then the day limit (5) caps it."""
    rt = limited("day=5", "2026-11-24:2")
    enroll_many(rt, 12)
    d = rt.dispatcher()
    day = timedelta(days=1)
    assert [d.run_pass(T0 + i * day).sent for i in range(4)] == [2, 4, 5, 1]


def test_without_limits_nothing_waits(limited, smtp) -> None:
    """No DRIP_SEND_LIMITS: every due message goes in one pass (the counters are not even touched)."""
    rt = limited("")
    assert rt.settings.send_limits is None
    enroll_many(rt, 4)
    assert rt.dispatcher().run_pass(T0).sent == 4


def test_limits_are_per_sending_domain(limited, smtp) -> None:
    """Another sending domain has its own allowance: a full domain does not hold back the other's mail."""
    rt = limited("hour=2")
    enroll_many(rt, 3)
    assert rt.dispatcher().run_pass(T0).sent == 2
    other = build_runtime(replace(rt.settings, from_address="News <news@other.example>"))
    try:
        assert other.dispatcher().run_pass(T0).sent == 1  # the third message now leaves from other.example
    finally:
        other.sessions.kw["bind"].dispose()


def test_day_cap_and_parsing() -> None:
    """The ramp doubles from the start date, never exceeds the day limit; bad values name the variable."""
    limits = SendLimits.parse("hour=500,day=5000", "2026-11-24:50")
    assert [limits.day_cap(date(2026, 11, d)) for d in (23, 24, 25, 26, 30)] == [50, 50, 100, 200, 3200]
    assert limits.day_cap(date(2026, 12, 24)) == 5000
    with pytest.raises(ConfigError, match="DRIP_SEND_LIMITS"):
        Settings.from_env({"DRIP_SECRET_KEY": "k" * 32, "DRIP_SEND_LIMITS": "week=4"})
    with pytest.raises(ConfigError, match="DRIP_WARMUP"):
        Settings.from_env({"DRIP_SECRET_KEY": "k" * 32, "DRIP_WARMUP": "tomorrow:50"})
