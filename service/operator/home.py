"""The console's home page, as plain values: the answers to the coach's daily questions.

- Who signed up today and in the last 7 days, per form (each campaign is a form)?
- How is each step doing: delivered, bounce, complaint and unsubscribe rates (and with tracking on, click and
  open rates), from campaign_stats' counts; where a step's audience grew because readers of other lead
  magnets join the sequence there, by how many and from where?
- Who unsubscribed in the last 7 days, how, and (when they said) why?
- What needs action: sending paused, the relay refusing, DKIM off, no postal address, a failing step?

What goes out in the next days is forecast.py's. Times are UTC here; the page shows them in the operator's zone.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.campaigns.model import Campaign
from service.core import counts
from service.core.models import Consent, Enrollment, Event, Message, Subscriber
from service.dispatch.sending_pause import paused_reason
from service.operator.campaign_stats import CampaignStats, all_stats
from service.operator.doctor import check_postal_address

WEEK = timedelta(days=7)
# Consent sources that are a reader filling in a form or a server posting one (not an import, a continuation,
# a confirmation click or a digest switch, which are not new signups).
SIGNUP_SOURCES = ("form", "json")
REASON_EVENT = "unsubscribe_reason"


def local_midnight(now: datetime, tz_name: str) -> datetime:
    local = now.astimezone(ZoneInfo(tz_name))
    return datetime.combine(local.date(), time(0), tzinfo=local.tzinfo).astimezone(UTC)


@dataclass(frozen=True)
class Signups:
    today: int
    week: int
    by_form: list[tuple[str, str, int, int]]  # (campaign key, title, today, last 7 days)


def signups(session: Session, campaigns: Mapping[str, Campaign], *, now: datetime, tz_name: str) -> Signups:
    today_from, week_from = local_midnight(now, tz_name), now - WEEK
    rows = session.execute(
        select(Consent.campaign, func.count(), func.count().filter(Consent.created_at >= today_from))
        .where(Consent.created_at >= min(week_from, today_from), Consent.source.in_(SIGNUP_SOURCES))
        .group_by(Consent.campaign)).all()
    by_form = sorted(((c, campaigns[c].title if c in campaigns else c, today, week) for c, week, today in rows),
                     key=lambda r: (-r[3], r[0]))
    return Signups(today=sum(r[2] for r in by_form), week=sum(r[3] for r in by_form), by_form=by_form)


@dataclass
class StepHealth:
    key: str
    subject: str
    sent: int  # tried: handed over or refused
    delivered: int
    bounced: int
    complained: int
    failed: int
    unsubscribed: int
    opened: int | None  # None: tracking is off
    clicked: int | None
    joined_from: dict[str, int] = field(default_factory=dict)  # readers of other lead magnets who joined here

    def rate(self, count: int | None) -> float | None:
        return None if count is None or not self.sent else count / self.sent

    @property
    def failure_rate(self) -> float | None:
        return self.rate(self.bounced + self.complained + self.failed)


@dataclass
class CampaignHealth:
    key: str
    title: str
    paused: bool
    steps: list[StepHealth]

    @property
    def tried(self) -> int:
        return sum(s.sent for s in self.steps)


def engagement(session: Session, campaign: str) -> dict[str, tuple[int, int]]:
    """Per step: how many of its emails were opened and how many clicked at least once (tracking). Read from
    the maintained counts (each email counted once, at its first open or click), not from the events."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (_c, key, _i), (opened, clicked) in counts.engaged_counts(session, campaign).items():
        out[key][0] += opened
        out[key][1] += clicked
    return {k: (v[0], v[1]) for k, v in out.items()}


def joined_from(session: Session, campaign: str) -> dict[str, dict[str, int]]:
    """Per step: emails sent to readers who came into this campaign from another one (a lead magnet's
    continuation), by that campaign. This is why a sequence's week 1 can have more readers than its welcome.
    (A message's campaign is its enrollment's; saying so of both lets the query start from the few continued
    enrollments of this campaign, through their index, instead of every message of it.)"""
    rows = session.execute(
        select(Message.step_key, Enrollment.origin_campaign, func.count())
        .join(Enrollment, Enrollment.id == Message.enrollment_id)
        .where(Message.campaign == campaign, Enrollment.campaign == campaign, Enrollment.origin_campaign.is_not(None),
               Message.sent_at.is_not(None))
        .group_by(Message.step_key, Enrollment.origin_campaign)).all()
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for key, origin, count in rows:
        out[key][origin] = count
    return out


def health(session: Session, campaigns: Mapping[str, Campaign], *, now: datetime,
           tracking: bool) -> list[CampaignHealth]:
    return [_campaign_health(session, stats, tracking) for stats in all_stats(session, campaigns, now=now)]


def _campaign_health(session: Session, stats: CampaignStats, tracking: bool) -> CampaignHealth:
    seen = engagement(session, stats.key) if tracking else {}
    joined = joined_from(session, stats.key)
    # A rate's denominator is every email of the step that was tried: handed over, or refused on the way
    # (a bounce at RCPT never gets a send time). Waiting and cancelled ones are not counted.
    steps = [StepHealth(key=s.key, subject=s.subject, sent=s.total - s.pending - s.suppressed,
                        delivered=s.delivered, bounced=s.bounced,
                        complained=s.complained, failed=s.failed, unsubscribed=s.unsubscribed_after,
                        opened=seen.get(s.key, (0, 0))[0] if tracking else None,
                        clicked=seen.get(s.key, (0, 0))[1] if tracking else None,
                        joined_from=joined.get(s.key, {}))
             for s in stats.steps]
    return CampaignHealth(stats.key, stats.title, stats.paused, steps)


@dataclass(frozen=True)
class Unsubscribe:
    at: datetime
    subscriber_id: int
    email: str
    how: str
    reason: str | None


def unsubscribes(session: Session, *, now: datetime) -> list[Unsubscribe]:
    """The last 7 days' unsubscribes, newest first: who, when, how (the event's own words) and the reader's
    optional reason, given after the unsubscribe on its confirmation page."""
    since = now - WEEK
    rows = session.execute(
        select(Event.created_at, Event.subscriber_id, Subscriber.email, Event.detail)
        .join(Subscriber, Subscriber.id == Event.subscriber_id)
        .where(Event.type == "unsubscribed", Event.created_at >= since)
        .order_by(Event.created_at.desc(), Event.id.desc()).limit(200)).all()
    ids = {r.subscriber_id for r in rows}
    reasons: dict[int, str] = {}
    if ids:
        for sid, detail in session.execute(
                select(Event.subscriber_id, Event.detail)
                .where(Event.type == REASON_EVENT, Event.subscriber_id.in_(ids), Event.created_at >= since)
                .order_by(Event.created_at, Event.id)):
            reasons[sid] = detail  # the latest one wins
    return [Unsubscribe(r.created_at, r.subscriber_id, r.email, r.detail or "", reasons.get(r.subscriber_id))
            for r in rows]


@dataclass(frozen=True)
class Warning:
    title: str
    detail: str
    fix: str
    link: str | None = None  # an endpoint name in the console where it is fixed


# A step is "failing more than usual" when its failure + bounce + complaint rate is at least this many times the
# rate of its campaign's other steps, and above FAILING_FLOOR, with at least FAILING_MIN_SENT emails tried.
FAILING_FACTOR, FAILING_FLOOR, FAILING_MIN_SENT = 2.0, 0.05, 10


def warnings(session: Session, *, now: datetime, dkim_on: bool, postal_placeholder: bool,
             campaigns_health: list[CampaignHealth]) -> list[Warning]:
    out: list[Warning] = []
    reason = paused_reason(session)
    if reason:
        out.append(Warning("Sending is paused", reason, "fix the credentials in DRIP_EMAIL_URL, then resume sending",
                           "admin.sending"))
    refused = session.execute(
        select(func.count(), func.max(Message.last_error))
        .where(Message.status == "deferred", Message.updated_at >= now - timedelta(hours=1),
               Message.last_error.is_not(None))).one()
    if refused[0]:
        out.append(Warning("The relay is refusing emails",
                           f"{refused[0]} email(s) deferred in the last hour; last error: {refused[1]}",
                           "they are retried on their own; check the relay or provider if this lasts"))
    if not dkim_on:
        out.append(Warning("DKIM signing is off",
                           "emails go out unsigned; Gmail and Yahoo expect DKIM from bulk senders",
                           "set DRIP_DKIM_DOMAIN, DRIP_DKIM_SELECTOR and DRIP_DKIM_KEY_FILE (docs/deliverability.md)"))
    postal = check_postal_address(postal_placeholder)
    if postal.status != "ok":
        out.append(Warning("Postal address missing", postal.detail, postal.fix))
    out += _failing_steps(campaigns_health)
    return out


def _failing_steps(campaigns_health: list[CampaignHealth]) -> list[Warning]:
    """Steps whose failure rate is well above the rest of their campaign's (see FAILING_FACTOR)."""
    out = []
    for c in campaigns_health:
        sent = sum(s.sent for s in c.steps)
        failing = sum(s.bounced + s.complained + s.failed for s in c.steps)
        for s in c.steps:
            rate = s.failure_rate
            if s.sent < FAILING_MIN_SENT or rate is None or rate < FAILING_FLOOR:
                continue
            others_sent = sent - s.sent
            usual = (failing - (s.bounced + s.complained + s.failed)) / others_sent if others_sent else 0.0
            if rate >= FAILING_FACTOR * usual:
                out.append(Warning(f"{c.title}: {s.key} fails more than usual",
                                   f"{rate:.0%} of its {s.sent} emails failed, bounced or were marked as spam "
                                   f"(the campaign's other steps: {usual:.0%})",
                                   "open the step's send log and read the errors"))
    return out
