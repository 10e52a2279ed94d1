"""Campaign health for the operator: per-step counts, emails sent per day, the funnel, pause/resume.

The numbers come from the maintained counts (service/core/counts.py), kept by the database in the same
transactions that change a message, so a page costs the same with a thousand messages or ten million.

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

from service.campaigns import states
from service.campaigns.model import Campaign
from service.core import counts
from service.core.models import CampaignState, Enrollment

PENDING = ("queued", "sending", "deferred")


def paused_campaigns(session: Session) -> set[str]:
    return set(session.scalars(select(CampaignState.campaign).where(CampaignState.paused.is_(True))))


def set_paused(session: Session, key: str, paused: bool, *, now: datetime) -> CampaignState:
    """Pause or resume a campaign (idempotent); the caller commits."""
    state = states.locked(session, [key], now=now)[key]
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


def _add_counts(steps: dict[str, StepStats], rows) -> None:
    """Fold maintained (step_key, step_index, status, n, n_sent) rows into the step rows."""
    for step_key, index, status, count, sent in rows:
        st = steps.setdefault(step_key, StepStats(index=index, key=step_key, subject="(no longer in the campaign)"))
        st.total += count
        st.sent += sent
        if status in PENDING:
            st.pending += count
        elif status in ("delivered", "bounced", "complained", "failed", "suppressed"):
            setattr(st, status, getattr(st, status) + count)


def _unsubscribed_after(session: Session, keys: list[str], steps: Mapping[str, dict[str, StepStats]]) -> None:
    """Per campaign, readers whose last email in it before they unsubscribed was each step: kept on their
    enrollment when they unsubscribe (`unsubscribed_after_step`), read through a partial index."""
    by_index = {key: {s.index: s for s in rows.values()} for key, rows in steps.items()}
    for campaign, idx, count in session.execute(
            select(Enrollment.campaign, Enrollment.unsubscribed_after_step, func.count())
            .where(Enrollment.campaign.in_(keys), Enrollment.unsubscribed_after_step.is_not(None))
            .group_by(Enrollment.campaign, Enrollment.unsubscribed_after_step)).all():
        if idx in by_index.get(campaign, {}):
            by_index[campaign][idx].unsubscribed_after += count


def sent_per_day(session: Session, key: str | None, *, now: datetime, days: int = 30) -> list[tuple[date, int]]:
    """Emails handed to the transport per UTC day, the last `days` days including today, zeros included
    (maintained counts: a few rows per day, whatever the size of the log)."""
    first = (now - timedelta(days=days - 1)).date()
    per_day = counts.sent_days(session, key, first)
    return [(first + timedelta(days=i), per_day.get(first + timedelta(days=i), 0)) for i in range(days)]


def _stats(session: Session, campaigns: list[Campaign], *, now: datetime, per_day: bool) -> list[CampaignStats]:
    """Campaign health for several campaigns in a fixed number of queries, from the maintained counts."""
    keys = [c.key for c in campaigns]
    steps = {c.key: _step_rows(c) for c in campaigns}
    by_campaign: dict[str, list] = {}
    for campaign, step_key, index, status, n, n_sent in counts.step_counts(session, keys):
        by_campaign.setdefault(campaign, []).append((step_key, index, status, n, n_sent))
    for key, rows in by_campaign.items():
        _add_counts(steps[key], sorted(rows, key=lambda r: (r[1], r[0], r[2])))
    _unsubscribed_after(session, keys, steps)
    enrollments = counts.enrollment_counts(session)
    by_key = {s.campaign: s for s in session.scalars(select(CampaignState).where(CampaignState.campaign.in_(keys)))}
    out = []
    for c in campaigns:
        state = by_key.get(c.key)
        stats = CampaignStats(key=c.key, title=c.title, paused=bool(state and state.paused),
                              paused_at=state.paused_at if state else None,
                              enrollments=dict(enrollments.get(c.key, {})),
                              steps=sorted(steps[c.key].values(), key=lambda s: s.index))
        if per_day:
            stats.per_day = sent_per_day(session, c.key, now=now)
        out.append(stats)
    return out


def campaign_stats(session: Session, campaign: Campaign, *, now: datetime, per_day: bool = True) -> CampaignStats:
    return _stats(session, [campaign], now=now, per_day=per_day)[0]


def all_stats(session: Session, campaigns: Mapping[str, Campaign], *, now: datetime) -> list[CampaignStats]:
    """Every campaign, in one pass over the counts (not one set of queries per campaign)."""
    return _stats(session, [c for _k, c in sorted(campaigns.items())], now=now, per_day=False)


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
