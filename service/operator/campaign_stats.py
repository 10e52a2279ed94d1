"""Campaign health for the operator: per-step counts, emails sent per day, the funnel, pause/resume.

Pause holds every enrollment where it is: dispatch queues no step of a paused campaign and claims none
of its messages (see dispatch). Resume only clears the flag. Nothing is rescheduled: enrollments that
became due while paused are due at once, and each reader still gets at most one email per pass,
because a step is queued only after the previous one was sent and the next step's delay counts from
that send.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.campaigns.model import Campaign
from service.core.models import CampaignState, Enrollment, Message, Subscriber

PENDING = ("queued", "sending", "deferred")


def paused_campaigns(session: Session) -> set[str]:
    return set(session.scalars(select(CampaignState.campaign).where(CampaignState.paused.is_(True))))


def set_paused(session: Session, key: str, paused: bool, *, now: datetime) -> CampaignState:
    """Pause or resume a campaign (idempotent); the caller commits."""
    state = session.get(CampaignState, key, with_for_update=True)
    if state is None:
        state = CampaignState(campaign=key, paused=False, paused_at=None, updated_at=now)
        session.add(state)
    if state.paused != paused:
        state.paused = paused
        state.paused_at = now if paused else None
        state.updated_at = now
    session.flush()
    return state


@dataclass
class StepStats:
    index: int
    key: str
    subject: str
    total: int = 0
    pending: int = 0
    sent: int = 0  # handed to the transport (whatever happened after)
    delivered: int = 0
    bounced: int = 0
    complained: int = 0
    failed: int = 0
    suppressed: int = 0
    unsubscribed_after: int = 0  # readers whose last email in this campaign before unsubscribing was this step


@dataclass
class CampaignStats:
    key: str
    title: str
    paused: bool
    paused_at: datetime | None
    enrollments: dict[str, int]
    steps: list[StepStats]
    per_day: list[tuple[date, int]] = field(default_factory=list)

    @property
    def enrolled(self) -> int:
        return sum(self.enrollments.values())


def _step_rows(campaign: Campaign) -> dict[str, StepStats]:
    return {s.key: StepStats(index=s.index, key=s.key, subject=s.subject) for s in campaign.steps}


def _status_counts(session: Session, key: str, steps: dict[str, StepStats]) -> None:
    rows = session.execute(
        select(Message.step_key, Message.step_index, Message.status, func.count(),
               func.count(Message.sent_at))
        .where(Message.campaign == key).group_by(Message.step_key, Message.step_index, Message.status)
    ).all()
    for step_key, index, status, count, sent in rows:
        st = steps.setdefault(step_key, StepStats(index=index, key=step_key, subject="(no longer in the campaign)"))
        st.total += count
        st.sent += sent
        if status in PENDING:
            st.pending += count
        elif status in ("delivered", "bounced", "complained", "failed", "suppressed"):
            setattr(st, status, getattr(st, status) + count)


def _unsubscribed_after(session: Session, key: str, steps: dict[str, StepStats]) -> None:
    last = (
        select(Message.subscriber_id, func.max(Message.step_index).label("idx"))
        .join(Subscriber, Subscriber.id == Message.subscriber_id)
        .where(Message.campaign == key, Subscriber.status == "unsubscribed", Message.sent_at.is_not(None),
               Message.sent_at <= Subscriber.unsubscribed_at)
        .group_by(Message.subscriber_id).subquery()
    )
    by_index = {s.index: s for s in steps.values()}
    for idx, count in session.execute(select(last.c.idx, func.count()).group_by(last.c.idx)).all():
        if idx in by_index:
            by_index[idx].unsubscribed_after += count


def _day(session: Session):
    """The UTC calendar day of sent_at, as text, on either backend."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", Message.sent_at), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", Message.sent_at)


def sent_per_day(session: Session, key: str | None, *, now: datetime, days: int = 30) -> list[tuple[date, int]]:
    """Emails handed to the transport per UTC day, the last `days` days including today, zeros included."""
    first = (now - timedelta(days=days - 1)).date()
    start = datetime.combine(first, datetime.min.time(), tzinfo=now.tzinfo)
    day = _day(session)
    q = select(day, func.count()).where(Message.sent_at >= start).group_by(day)
    if key:
        q = q.where(Message.campaign == key)
    counts = {str(d): n for d, n in session.execute(q).all()}
    return [(first + timedelta(days=i), counts.get((first + timedelta(days=i)).isoformat(), 0)) for i in range(days)]


def campaign_stats(session: Session, campaign: Campaign, *, now: datetime, per_day: bool = True) -> CampaignStats:
    steps = _step_rows(campaign)
    _status_counts(session, campaign.key, steps)
    _unsubscribed_after(session, campaign.key, steps)
    enrollments = dict(session.execute(
        select(Enrollment.status, func.count()).where(Enrollment.campaign == campaign.key)
        .group_by(Enrollment.status)).all())
    state = session.get(CampaignState, campaign.key)
    stats = CampaignStats(key=campaign.key, title=campaign.title, paused=bool(state and state.paused),
                          paused_at=state.paused_at if state else None, enrollments=enrollments,
                          steps=sorted(steps.values(), key=lambda s: s.index))
    if per_day:
        stats.per_day = sent_per_day(session, campaign.key, now=now)
    return stats


def all_stats(session: Session, campaigns: Mapping[str, Campaign], *, now: datetime) -> list[CampaignStats]:
    return [campaign_stats(session, c, now=now, per_day=False) for _k, c in sorted(campaigns.items())]


def stats_dict(stats: CampaignStats) -> dict:
    """The JSON shape of the API and `drip stats --json`."""
    return {
        "key": stats.key, "title": stats.title, "paused": stats.paused,
        "paused_at": stats.paused_at.isoformat() if stats.paused_at else None,
        "enrollments": {s: stats.enrollments.get(s, 0) for s in ("active", "completed", "stopped")},
        "steps": [{k: getattr(s, k) for k in ("index", "key", "subject", "total", "pending", "sent", "delivered",
                                              "bounced", "complained", "failed", "suppressed",
                                              "unsubscribed_after")} for s in stats.steps],
        "sent_per_day": [{"date": d.isoformat(), "sent": n} for d, n in stats.per_day],
    }
