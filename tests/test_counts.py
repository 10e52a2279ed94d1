"""Maintained counts: after randomized sends, bounces, deferrals, provider events, unsubscribes, retries,
resubscriptions and erasures by several readers, and under racing workers and webhooks, every count equals
a recount of the tables; `drip stats --rebuild` restores counts that were tampered with; campaign health
and /metrics report the recounted numbers."""
from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import timedelta

import pytest
from click.testing import CliRunner
from conftest import at
from sqlalchemy import func, select, text

from service.audience.privacy import erase_subscriber
from service.audience.signups import ConsentMeta, parse_signup, signup
from service.core import counts
from service.core.models import Enrollment, Message, Subscriber
from service.feedback import delivery
from service.operator import subscribers as ops
from service.operator.campaign_stats import all_stats, campaign_stats

T0 = at("2026-03-02T15:00:00")
CAMPAIGN = "back-pain-bundle"


def enroll(rt, address: str, when=T0) -> None:
    data = parse_signup({"email": address, "name": address.split("@")[0]}, campaigns=rt.campaigns,
                        default_campaign=rt.settings.default_campaign)
    with rt.sessions() as s, s.begin():
        signup(s, data, campaign=rt.campaigns[data.campaign], meta=ConsentMeta("json"), now=when)


def assert_exact(rt) -> None:
    with rt.sessions() as s:
        assert counts.mismatches(s) == []


def fold(rt) -> int:
    with rt.sessions() as s, s.begin():
        return counts.fold(s)


def test_counts_equal_a_recount_after_a_randomized_history(runtime, smtp) -> None:
    rng = random.Random(20261207)
    rt = runtime
    readers = [f"reader{i}@example.com" for i in range(20)]
    # Readers in different states: some refused for good at RCPT, some deferred a few times first.
    for a in readers[:2]:
        smtp.handler.script(a, "RCPT", "550 5.1.1 no such mailbox")
    for a in readers[2:4]:
        smtp.handler.script(a, "RCPT", "451 4.3.0 try later", "451 4.3.0 try later")
    for i, a in enumerate(readers):
        enroll(rt, a, T0 + timedelta(minutes=i))
    assert_exact(rt)
    now = T0 + timedelta(minutes=20)
    for day in range(16):
        now += timedelta(days=rng.randint(2, 5), hours=rng.randint(0, 5))
        rt.dispatcher().run_pass(now)
        assert_exact(rt)
        with rt.sessions() as s, s.begin():
            sent = s.scalars(select(Message).where(Message.status.in_(("sent", "delivered")))).all()
            for m in rng.sample(sent, min(2, len(sent))):
                kind = rng.choice(["delivered"] * 4 + ["open"] * 2 + ["hard_bounce", "complaint", "soft_bounce",
                                                                      "failed", "deferred"])
                delivery.apply(s, delivery.DeliveryEvent(kind=kind, source="postmark",
                                                         event_id=f"ev-{day}-{m.id}-{kind}", message_pk=m.id,
                                                         detail=kind), now=now)
        assert_exact(rt)
        with rt.sessions() as s, s.begin():
            active = s.scalars(select(Subscriber).where(Subscriber.status == "active")).all()
            if active and rng.random() < 0.3:
                ops.unsubscribe(s, rng.choice(active), now=now, by="test")
            gone = s.scalars(select(Subscriber).where(Subscriber.status == "unsubscribed")).all()
            if gone and rng.random() < 0.3:
                ops.resubscribe(s, rng.choice(gone), reason="asked to come back", now=now, by="test")
            failed = s.scalars(select(Message).join(Subscriber, Subscriber.id == Message.subscriber_id)
                               .where(Message.status == "failed", Subscriber.status == "active")).all()
            if failed:
                ops.retry_message(s, rng.choice(failed), now=now, by="test")
            if day in (5, 9):  # an erasure deletes the reader's rows by cascade
                erase_subscriber(s, rng.choice(s.scalars(select(Subscriber)).all()), now, by="test")
        assert_exact(rt)
        if rng.random() < 0.5:
            fold(rt)
            assert_exact(rt)
    with rt.sessions() as s:
        statuses = Counter(s.scalars(select(Message.status)))
        subs = Counter(s.scalars(select(Subscriber.status)))
    # The history really went through the states the counts must follow.
    assert statuses["sent"] + statuses["delivered"] > 10, (statuses, subs)
    assert {"bounced", "delivered", "sent"} <= set(statuses) and len(statuses) >= 4, statuses
    assert {"active", "unsubscribed"} <= set(subs), subs
    fold(rt)
    with rt.sessions() as s:
        assert s.scalar(select(func.count()).select_from(text("count_deltas"))) == 0
        assert counts.mismatches(s) == []
        # Campaign health reads the counts: each step's numbers are the messages' own.
        stats = campaign_stats(s, rt.campaigns[CAMPAIGN], now=now)
        for step in stats.steps:
            rows = s.execute(select(Message.status, Message.sent_at).where(
                Message.campaign == CAMPAIGN, Message.step_key == step.key)).all()
            assert step.total == len(rows)
            assert step.sent == sum(1 for _st, at_ in rows if at_ is not None)
            for name in ("delivered", "bounced", "complained", "failed", "suppressed"):
                assert getattr(step, name) == sum(1 for st, _a in rows if st == name), name
            assert step.pending == sum(1 for st, _a in rows if st in ("queued", "sending", "deferred"))
        enrolled = Counter(s.scalars(select(Enrollment.status).where(Enrollment.campaign == CAMPAIGN)))
        assert stats.enrollments == dict(enrolled)
        [listed] = [c for c in all_stats(s, rt.campaigns, now=now) if c.key == CAMPAIGN]
        assert [vars(x) for x in listed.steps] == [vars(x) for x in stats.steps]
        per_day = dict(stats.per_day)
        sent_days = Counter(m.sent_at.date() for m in s.scalars(select(Message).where(
            Message.campaign == CAMPAIGN, Message.sent_at.is_not(None))))
        assert {d: n for d, n in per_day.items() if n} == {d: n for d, n in sent_days.items()
                                                           if d in per_day}


def test_racing_workers_and_webhooks_keep_counts_exact(runtime, smtp) -> None:
    """Three workers pass at once while webhooks report deliveries and readers unsubscribe."""
    rt = runtime
    readers = [f"race{i}@example.com" for i in range(30)]
    for a in readers[:3]:
        smtp.handler.script(a, "RCPT", "550 5.1.1 no such mailbox")
    for i, a in enumerate(readers):
        enroll(rt, a, T0 + timedelta(seconds=i))
    errors: list[BaseException] = []
    now = T0 + timedelta(minutes=5)

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # reported below: a thread's failure must fail the test
                errors.append(exc)
        return run

    def worker(n: int):
        def go():
            d = rt.dispatcher()
            d.worker_id = f"racer-{n}"
            d.batch_size = 4
            for day in range(3):
                d.run_pass(now + timedelta(days=day * 7))
        return go

    def webhooks():
        rng = random.Random(7)
        for i in range(40):
            with rt.sessions() as s, s.begin():
                ids = s.scalars(select(Message.id).where(Message.status == "sent")).all()
                if ids:
                    mid = rng.choice(ids)
                    kind = rng.choice(["delivered", "delivered", "complaint"])
                    delivery.apply(s, delivery.DeliveryEvent(kind=kind, source="sendgrid", event_id=f"r{i}",
                                                             message_pk=mid), now=now)
            if i % 10 == 0:
                with rt.sessions() as s, s.begin():
                    counts.fold(s)

    def unsubscribes():
        for a in readers[5:10]:
            with rt.sessions() as s, s.begin():
                sub = ops.find_by_email(s, a)
                if sub is not None and sub.status == "active":
                    # A second before the workers' frozen clock: an email recorded after this unsubscribe is
                    # stamped after it, as with a real clock (counts.mismatches says why that matters).
                    ops.unsubscribe(s, sub, now=now - timedelta(seconds=1), by="reader")

    threads = [threading.Thread(target=guarded(f)) for f in (worker(1), worker(2), worker(3), webhooks,
                                                             unsubscribes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert_exact(rt)
    with rt.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Message).where(Message.sent_at.is_not(None))) >= 27
        assert s.scalar(select(func.count()).select_from(Message).where(Message.status == "bounced")) == 3


def test_opened_and_clicked_count_each_email_once(runtime, smtp) -> None:
    """Tracking: each step's opened and clicked emails are counted once per email, whatever number of opens
    and clicks it had, from the tracking pixel or a provider, racing or not, and they follow an email whose
    status moves or whose reader is erased. The home page's rates read these counts."""
    from service.operator import home

    rt = runtime
    readers = [f"eng{i}@example.com" for i in range(8)]
    for i, a in enumerate(readers):
        enroll(rt, a, T0 + timedelta(seconds=i))
    rt.dispatcher().run_pass(T0 + timedelta(minutes=1))
    with rt.sessions() as s:
        mid = {to: i for to, i in s.execute(select(Message.to_email, Message.id))}
    assert set(mid) == set(readers)
    welcome = rt.campaigns[CAMPAIGN].steps[0].key

    def report(address: str, kind: str, source: str = "tracking", event_id: str | None = None) -> None:
        with rt.sessions() as s, s.begin():
            delivery.apply(s, delivery.DeliveryEvent(kind, source=source, event_id=event_id,
                                                     message_pk=mid[address]), now=T0 + timedelta(hours=1))

    report("eng0@example.com", "open")                  # opened twice
    report("eng0@example.com", "open")
    report("eng1@example.com", "click")                 # clicked, the pixel never loaded
    for _ in range(2):                                  # opened and clicked, twice each
        report("eng2@example.com", "open")
        report("eng2@example.com", "click")
    # eng3: nothing at all
    report("eng4@example.com", "open")                  # opened, then erased below
    report("eng5@example.com", "open", "postmark", "pm-open-5")  # a provider's open, then its bounce
    report("eng5@example.com", "open", "postmark", "pm-open-5")  # the same provider event again
    report("eng5@example.com", "hard_bounce", "postmark", "pm-bounce-5")
    report("eng6@example.com", "open", "postmark", "pm-open-6")  # opened by the pixel and by the provider
    report("eng6@example.com", "open")
    assert_exact(rt)
    with rt.sessions() as s:
        assert home.engagement(s, CAMPAIGN) == {welcome: (5, 2)}
    # Opens of one email racing from four requests at once: still one opened email.
    errors: list[BaseException] = []

    def opens() -> None:
        try:
            for _ in range(5):
                report("eng7@example.com", "open")
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=opens) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with rt.sessions() as s:
        assert s.scalar(select(func.count()).select_from(text("events")).where(
            text("type = 'opened' AND message_id = :m")).params(m=mid["eng7@example.com"])) == 20
        assert home.engagement(s, CAMPAIGN) == {welcome: (6, 2)}
    with rt.sessions() as s, s.begin():
        erase_subscriber(s, ops.find_by_email(s, "eng4@example.com"), T0 + timedelta(hours=2), by="test")
    assert_exact(rt)
    fold(rt)
    assert_exact(rt)
    with rt.sessions() as s:
        assert home.engagement(s, CAMPAIGN) == {welcome: (5, 2)}
        # The same figures from the events themselves: distinct emails with an open / a click.
        from_events = s.execute(text(
            "SELECT count(DISTINCT CASE WHEN type = 'opened' THEN message_id END), "
            "count(DISTINCT CASE WHEN type = 'clicked' THEN message_id END) FROM events "
            "WHERE type IN ('opened', 'clicked')")).one()
        assert tuple(from_events) == (5, 2)
        health = {c.key: c for c in home.health(s, rt.campaigns, now=T0 + timedelta(hours=2), tracking=True)}
        step = health[CAMPAIGN].steps[0]
        assert (step.opened, step.clicked) == (5, 2)


def test_stats_rebuild_restores_tampered_counts(runtime, smtp, tmp_path, monkeypatch) -> None:
    rt = runtime
    for i in range(5):
        enroll(rt, f"rb{i}@example.com")
    rt.dispatcher().run_pass(T0 + timedelta(minutes=1))
    with rt.sessions() as s, s.begin():
        counts.fold(s)
        s.execute(text("UPDATE message_counts SET n = n + 100, n_opened = n_opened + 3"))
        s.execute(text("DELETE FROM subscriber_counts"))
    with rt.sessions() as s:
        assert counts.mismatches(s)
    from service.cli import main

    monkeypatch.chdir(tmp_path)
    env = {"DATABASE_URL": rt.settings.database_url, "DRIP_SECRET_KEY": rt.settings.secret_key,
           "DRIP_EMAIL_URL": rt.settings.email_url}
    check = CliRunner().invoke(main, ["stats", "--check"], env=env)
    assert check.exit_code == 1 and "maintained" in check.output, check.output
    result = CliRunner().invoke(main, ["stats", "--rebuild"], env=env)
    assert result.exit_code == 0, result.output
    assert "rebuilt" in result.output and "back-pain-bundle" in result.output
    assert_exact(rt)
    assert CliRunner().invoke(main, ["stats", "--check"], env=env).exit_code == 0


@pytest.mark.parametrize("readers", [3])
def test_metrics_read_the_counts(client, runtime, smtp, readers) -> None:
    for i in range(readers):
        enroll(runtime, f"m{i}@example.com")
    runtime.dispatcher().run_pass(T0 + timedelta(minutes=1))
    body = client.get("/metrics").get_data(as_text=True)
    assert f'drip_messages{{status="sent"}} {float(readers)}' in body
    assert f'drip_subscribers{{status="active"}} {float(readers)}' in body
    assert f'drip_signups{{campaign="{CAMPAIGN}"}} {float(readers)}' in body


def test_metrics_token_setting_guards_the_scrape(runtime, smtp) -> None:
    """With DRIP_METRICS_TOKEN set, /metrics answers only a scrape that sends it as a bearer token."""
    from dataclasses import replace

    from service.app import create_app
    from service.core.config import Settings
    from service.runtime import build_runtime

    enroll(runtime, "m@example.com")
    rt = build_runtime(replace(runtime.settings, metrics_token="scrape-secret-123"))
    app = create_app(runtime=rt)
    app.config["TESTING"] = True
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-secret-123"}):
        r = client.get("/metrics", headers=headers)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert "drip_" not in r.get_data(as_text=True)
    r = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-123"})
    assert r.status_code == 200 and 'drip_subscribers{status="active"} 1.0' in r.get_data(as_text=True)
    env = {"DATABASE_URL": "sqlite:///x.db", "DRIP_SECRET_KEY": "k" * 32, "DRIP_METRICS_TOKEN": "t0k" * 11}
    assert Settings.from_env(env).metrics_token == "t0k" * 11
    assert "t0k" not in repr(Settings.from_env(env))
    rt.sessions.kw["bind"].dispose()
