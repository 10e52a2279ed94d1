"""Where independently built features meet: provider deferrals, IDN senders, DRIP_FROM display names,
relay outages and the give-up clock, what the console shows "as sent", retention limits."""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from conftest import at
from sqlalchemy import func, select

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.core.config import ConfigError, Settings
from service.core.models import Enrollment, Message, MessageContent
from service.feedback.delivery import DeliveryEvent, apply
from service.runtime import build_runtime

T0 = at("2026-04-06T10:00:00")


def enroll(rt, email: str, now=T0) -> int:
    data = parse_signup({"email": email}, campaigns=rt.campaigns, default_campaign="back-pain-bundle")
    with rt.sessions() as s, s.begin():
        result = signup(s, data, campaign=rt.campaigns["back-pain-bundle"], meta=ConsentMeta("json"), now=now)
    return result.subscriber_id


def test_a_provider_deferral_after_sending_does_not_stall_the_reader(runtime, smtp):
    """A sent email the provider later reports as deferred still counts as sent for the sequence: the next
    week's email goes out on time instead of the enrollment waiting for ever."""
    enroll(runtime, "later@example.org")
    d = runtime.dispatcher()
    assert d.run_pass(T0).sent == 1
    welcome = runtime.campaigns["back-pain-bundle"].steps[0]
    with runtime.sessions() as s, s.begin():
        m = s.scalars(select(Message)).one()
        ev = DeliveryEvent(kind="deferred", source="dsn", event_id="d1", message_pk=m.id, email="later@example.org")
        assert apply(s, ev, now=T0 + timedelta(hours=1), policy=runtime.delivery_policy()) == "applied"
        assert s.get(Message, m.id).status == "deferred"
    assert d.run_pass(T0 + timedelta(days=8)).sent == 1
    subjects = [msg["Subject"] for msg in smtp.handler.messages()]
    assert subjects == [welcome.subject, runtime.campaigns["back-pain-bundle"].steps[1].subject]


def test_an_idn_from_domain_is_sent_in_punycode(runtime, smtp):
    """A sender address on an internationalised domain goes out with every derived address in ASCII."""
    rt = build_runtime(replace(runtime.settings, from_address="Coach Søfia <sofia@bäckpain.example>"))
    enroll(rt, "idn@example.org")
    assert rt.dispatcher().run_pass(T0).sent == 1
    [msg] = smtp.handler.messages()
    assert msg["From"].addresses[0].addr_spec == "sofia@xn--bckpain-5wa.example"
    assert msg["From"].addresses[0].display_name == "Coach Søfia"
    assert msg["Message-ID"].endswith("@xn--bckpain-5wa.example>")


def test_drip_from_keeps_a_non_ascii_campaign_name_readable(runtime, smtp):
    """DRIP_FROM without a display name keeps the campaign's name, encoded once (not as literal '=?utf-8?')."""
    campaign = runtime.campaigns["back-pain-bundle"]
    campaigns = {**runtime.campaigns, "back-pain-bundle": replace(campaign, from_address="Coach Søfia <s@x.example>")}
    rt = build_runtime(replace(runtime.settings, from_address="news@backpainwarriors.example"))
    rt.campaigns.update(campaigns)
    enroll(rt, "name@example.org")
    assert rt.dispatcher().run_pass(T0).sent == 1
    [msg] = smtp.handler.messages()
    assert msg["From"].addresses[0].display_name == "Coach Søfia"
    assert msg["From"].addresses[0].addr_spec == "news@backpainwarriors.example"


def test_after_a_long_outage_a_greylisting_retry_is_not_given_up(runtime, smtp):
    """Four days of a dead relay, then one 451 greylisting reply: the message is retried, not failed at once."""
    enroll(runtime, "grey@example.org")
    d = runtime.dispatcher()
    smtp.stop()
    now = T0
    for _ in range(10):
        d.run_pass(now)
        now += timedelta(hours=10)
    smtp.start()
    smtp.handler.script("grey@example.org", "DATA", "451 4.7.1 Greylisted, try again")
    assert d.run_pass(now).deferred == 1
    with runtime.sessions() as s:
        m = s.scalars(select(Message)).one()
        assert (m.status, m.attempts) == ("deferred", 1)
    assert d.run_pass(now + timedelta(hours=1)).sent == 1


def test_nothing_is_kept_as_sent_for_an_email_the_relay_never_took(runtime, smtp):
    """The console's "as sent" bytes exist only for emails handed to the server."""
    enroll(runtime, "never@example.org")
    smtp.stop()
    runtime.dispatcher().run_pass(T0)
    with runtime.sessions() as s:
        assert s.scalar(select(func.count()).select_from(MessageContent)) == 0
        assert s.scalars(select(Enrollment.next_step)).one() == 0


def test_retention_shorter_than_the_bounce_window_is_refused() -> None:
    """A retention period under 30 days would erase the soft-bounce history and webhook replay ids."""
    with pytest.raises(ConfigError, match="DRIP_EVENT_RETENTION_DAYS"):
        Settings.from_env({"DRIP_SECRET_KEY": "k" * 32, "DRIP_EVENT_RETENTION_DAYS": "7"})
    settings = Settings.from_env({"DRIP_SECRET_KEY": "k" * 32, "DRIP_EVENT_RETENTION_DAYS": "90"})
    assert settings.event_retention_days == 90
