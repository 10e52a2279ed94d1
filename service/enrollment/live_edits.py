"""Safe live edits: where an enrolled reader stands is read from step KEYS, not file positions.

A reader's place in a campaign is "just after the furthest step, in the current file's order, whose
message for their enrollment is finished" (sent, failed, ...; a step is never queued twice). Before
their first message it is the enrollment's `next_step` index (0, or the `continue_at` step of a
continuation). So after an edit of campaign.toml:

- a removed step is skipped by readers who had not got it; readers who had it continue after it;
- an appended step reaches everyone, and completed readers are reactivated at it (`reactivate_grown`);
- a step inserted before a reader's place is not sent to them; one inserted after it is;
- reordering sends each reader the steps after their furthest step in the new order;
- a changed delay applies from the next time a step is scheduled; a due time already set stays.

`diff` tells the operator, per campaign, how many enrolled readers each of these affects and what each
group gets next, before the edit is deployed (the files on disk are compared with the database).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from service.campaigns import states
from service.campaigns.model import Campaign, Step
from service.campaigns.schedule import step_due
from service.core import events
from service.core.db import one_of
from service.core.models import Enrollment, Message, Subscriber

IN_FLIGHT = ("queued", "deferred", "sending")


def sent_keys(session: Session, enrollment_ids: Iterable[int]) -> dict[int, set[str]]:
    """Step keys whose message is finished (sent, failed, ...), per enrollment, in one query. A message
    still in flight is left out, so its enrollment resolves to that step and waits for it (the unique
    (enrollment, step) key turns a second queueing into a no-op) instead of running ahead of it."""
    ids = list(enrollment_ids)
    out: dict[int, set[str]] = {i: set() for i in ids}
    if ids:
        for eid, key in session.execute(select(Message.enrollment_id, Message.step_key)
                                        .where(one_of(session.get_bind().dialect.name, Message.enrollment_id, ids),
                                               # sent_at set: handed over already, even if a provider
                                               # later reports it deferred (it must not stall the reader)
                                               or_(Message.status.notin_(IN_FLIGHT), Message.sent_at.is_not(None)))):
            out[eid].add(key)
    return out


def position(campaign: Campaign, enrollment: Enrollment, had: set[str]) -> int:
    """Index in the current file of the step this enrollment gets next (== len(steps) when done)."""
    reached = [s.index for s in campaign.steps if s.key in had]
    return max(reached) + 1 if reached else enrollment.next_step


def next_step(campaign: Campaign, enrollment: Enrollment, had: set[str]) -> Step | None:
    return campaign.step(position(campaign, enrollment, had))


def steps_digest(campaign: Campaign) -> str:
    return hashlib.sha256("\n".join(s.key for s in campaign.steps).encode()).hexdigest()


def changed_since_checked(session: Session, campaigns: Mapping[str, Campaign], now: datetime) -> dict[str, Campaign]:
    """The campaigns whose steps differ from those last checked (a new campaign included), now recorded as
    checked. Locked, so of two workers starting at once one sees the change (the caller commits)."""
    rows = states.locked(session, campaigns, now=now)
    changed = {}
    for key, campaign in campaigns.items():
        digest = steps_digest(campaign)
        state = rows[key]
        if state.steps_digest != digest:
            state.steps_digest = digest
            changed[key] = campaign
    session.flush()
    return changed


def reactivate_grown(session: Session, campaigns: Mapping[str, Campaign], now: datetime) -> int:
    """Completed enrollments of campaigns that gained steps after the reader's last one become active
    again at the first new step, due its delay after their last send. Returns how many.

    The query reads every completed enrollment of a campaign (millions after a year), so workers call it
    only for the campaigns `changed_since_checked` returns: once after each edit of their steps."""
    count = 0
    for campaign in campaigns.values():
        last = campaign.steps[-1].key
        rows = session.execute(
            select(Enrollment, Subscriber).join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
            .where(Enrollment.campaign == campaign.key, Enrollment.status == "completed",
                   Subscriber.status == "active",
                   ~exists().where(Message.enrollment_id == Enrollment.id, Message.step_key == last))
            .with_for_update(skip_locked=True, of=Enrollment)  # two workers starting at once: one does it
        ).all()
        had = sent_keys(session, [e.id for e, _s in rows])
        for enrollment, subscriber in rows:
            step = next_step(campaign, enrollment, had[enrollment.id])
            if step is None or not had[enrollment.id]:
                continue
            enrollment.status, enrollment.next_step = "active", step.index
            enrollment.due_from = enrollment.last_sent_at or now
            enrollment.next_due_at = step_due(campaign, step, after=enrollment.due_from,
                                              reader_timezone=subscriber.timezone)
            enrollment.updated_at = now
            events.record(session, type="reactivated", now=now, subscriber_id=subscriber.id,
                          detail=f"{campaign.key} gained step {step.key}")
            count += 1
    return count


@dataclass(frozen=True)
class DiffLine:
    campaign: str
    change: str  # "removed", "appended", "moved", joined by "+", or "unchanged"
    readers: int
    detail: str

    def line(self) -> str:
        return f"{self.campaign}: {self.change}: {self.readers} reader(s): {self.detail}"


def diff(session: Session, campaigns: Mapping[str, Campaign]) -> list[DiffLine]:
    """For every campaign: enrolled readers (active or completed) grouped by what the current files do to
    them (see `_changes`) and by the step each gets next. Reads only."""
    lines: list[DiffLine] = []
    for campaign in campaigns.values():
        rows = session.scalars(select(Enrollment).where(Enrollment.campaign == campaign.key,
                                                        Enrollment.status.in_(("active", "completed")))).all()
        had = sent_keys(session, [e.id for e in rows])
        groups: Counter[tuple[str, str]] = Counter()
        for e in rows:
            step = next_step(campaign, e, had[e.id])
            gets = f"next: {step.key}" if step is not None else "next: nothing (done)"
            groups[(_changes(campaign, e, had[e.id], step), gets)] += 1
        lines += [DiffLine(campaign.key, c, n, g) for (c, g), n in sorted(groups.items())]
    return lines


def _changes(campaign: Campaign, e: Enrollment, had: set[str], step: Step | None) -> str:
    """What the current file changes for this reader: "removed" (a step they had, or were due next, is
    gone), "appended" (they completed, and there is more now), "moved" (their next step is not the one
    they were pointed at: steps were inserted or reordered before it), joined by "+"; else "unchanged"."""
    keys = {s.key for s in campaign.steps}
    tags: list[str] = []
    pointed = e.next_step_key or (campaign.steps[0].key if e.next_step == 0 else None)
    if had - keys or (e.status == "active" and pointed is not None and pointed not in keys):
        tags.append("removed")
    if e.status == "completed" and step is not None:
        tags.append("appended")
    elif e.status == "active" and not tags and step is not None and pointed not in (None, step.key):
        tags.append("moved")
    return "+".join(tags) or "unchanged"


def reach(session: Session, campaign: Campaign) -> dict[str, tuple[int, int]]:
    """Per step key of `campaign` (as it would be after an edit): (enrolled readers who will still get it,
    readers for whom it is the very next step), by the same place rule as the dispatcher. A snoozed reader
    counts (they get it when the snooze ends), and so does one who had completed the campaign when steps are
    appended after their last (`reactivate_grown`); one who left does not."""
    rows = session.scalars(select(Enrollment).join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
                           .where(Enrollment.campaign == campaign.key, Subscriber.status == "active",
                                  Enrollment.status.in_(("active", "completed")))).all()
    had = sent_keys(session, [e.id for e in rows])
    will: Counter[int] = Counter()
    upcoming: Counter[int] = Counter()
    for e in rows:
        at = position(campaign, e, had[e.id])
        upcoming[at] += 1
        for index in range(at, len(campaign.steps)):
            will[index] += 1
    return {s.key: (will[s.index], upcoming[s.index]) for s in campaign.steps}
