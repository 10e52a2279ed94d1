"""The reader's own controls: leave one campaign or everything, switch to a campaign's digest,
correct name and time zone, snooze, download or erase their data.

Domain functions only: they take a session and plain values, the caller commits. Every change is
recorded as an event, so the operator's timeline shows what the reader did and when. Export and erasure
are service/audience/privacy.py's, the same ones the operator uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.audience import privacy
from service.audience.signups import SignupError, clean_name
from service.campaigns.model import Campaign
from service.campaigns.schedule import step_due, valid_timezone
from service.core import events
from service.core.errors import FieldError
from service.core.models import Consent, Enrollment, Event, Message, Subscriber
from service.enrollment import start as enrollment_start
from service.enrollment.suppression import PENDING, stop_subscriber

SNOOZE_WEEKS = (2, 4, 8)


class PreferenceError(FieldError):
    """The reader asked for something invalid; `field` names the form field."""


@dataclass(frozen=True)
class CampaignRow:
    """One line of the page's campaign list."""

    key: str
    title: str
    status: str
    sent: int
    total: int
    next_due_at: datetime | None
    digest_key: str
    digest_title: str
    digest_label: str = ""  # the switch button's words, e.g. "one email a month" (not the operator's title)


def find(session: Session, public_id: str, *, lock: bool = False) -> Subscriber | None:
    query = select(Subscriber).where(Subscriber.public_id == public_id)
    return session.scalar(query.with_for_update() if lock else query)


def campaign_rows(session: Session, subscriber: Subscriber, campaigns: dict[str, Campaign]) -> list[CampaignRow]:
    """The reader's enrollments, active ones first; the digest offer only where the campaign has one."""
    rows = []
    for e in session.scalars(select(Enrollment).where(Enrollment.subscriber_id == subscriber.id)
                             .order_by(Enrollment.status, Enrollment.id)):
        c = campaigns.get(e.campaign)
        digest = campaigns.get(c.digest) if c and c.digest else None
        rows.append(CampaignRow(key=e.campaign, title=c.title if c else e.campaign, status=e.status,
                                sent=e.next_step, total=len(c.steps) if c else e.next_step,
                                next_due_at=e.next_due_at, digest_key=digest.key if digest else "",
                                digest_title=digest.title if digest else "",
                                digest_label=cadence(digest) if digest else ""))
    return rows


def cadence(campaign: Campaign) -> str:
    """How often a campaign writes, in the reader's words, from its regular steps' delays."""
    days = [s.delay.days for s in campaign.steps[1:] if s.delay.days] or [7]
    typical = max(set(days), key=days.count)
    if typical >= 28:
        return "one email a month"
    return "one email a week" if typical == 7 else f"one email every {typical} days"


def _active_enrollment(session: Session, subscriber: Subscriber, campaign: str) -> Enrollment:
    enrollment = session.scalar(select(Enrollment).where(
        Enrollment.subscriber_id == subscriber.id, Enrollment.campaign == campaign, Enrollment.status == "active"))
    if enrollment is None:
        raise PreferenceError("not_enrolled", "you are not receiving that campaign", "campaign")
    return enrollment


def _stop_enrollment(session: Session, enrollment: Enrollment, *, reason: str, now: datetime) -> int:
    """Stops one enrollment and cancels its unsent messages (conditional update, as in suppression:
    a message a worker already claimed is caught by that worker's pre-send check)."""
    enrollment.status, enrollment.stopped_reason = "stopped", reason
    enrollment.next_due_at, enrollment.updated_at = None, now
    cancelled = session.scalars(
        update(Message).where(Message.enrollment_id == enrollment.id, Message.status.in_(PENDING))
        .values(status="suppressed", updated_at=now, last_error=f"cancelled: {reason}")
        .returning(Message.id)
    ).all()
    for message_id in cancelled:
        events.record(session, type="suppressed", now=now, subscriber_id=enrollment.subscriber_id,
                      message_id=message_id, detail=f"cancelled: {reason}")
    return len(cancelled)


def leave_campaign(session: Session, subscriber: Subscriber, campaign: str, *, now: datetime) -> int:
    """The reader leaves one campaign; their other campaigns go on. Returns how many emails were cancelled."""
    enrollment = _active_enrollment(session, subscriber, campaign)
    cancelled = _stop_enrollment(session, enrollment, reason="left on preference page", now=now)
    events.record(session, type="left_campaign", now=now, subscriber_id=subscriber.id,
                  detail=f"left {campaign} on the preference page", data={"campaign": campaign})
    return cancelled


def leave_everything(session: Session, subscriber: Subscriber, *, now: datetime) -> int:
    """The same as unsubscribing: every enrollment stops and queued mail is cancelled."""
    if subscriber.status != "active":
        return 0
    cancelled = stop_subscriber(session, subscriber, status="unsubscribed", reason="unsubscribed", now=now)
    events.record(session, type="unsubscribed", now=now, subscriber_id=subscriber.id,
                  detail="left everything on the preference page", data={"method": "preferences"})
    return cancelled


def update_profile(session: Session, subscriber: Subscriber, *, name: object, timezone: object,
                   campaigns: dict[str, Campaign], now: datetime) -> list[str]:
    """Corrects name and time zone; a new zone moves every pending step to the send hour in that zone."""
    try:
        new_name = clean_name(name)
    except SignupError as exc:
        raise PreferenceError(exc.code, exc.message, "name") from None
    new_tz = timezone.strip() if isinstance(timezone, str) else ""
    if new_tz and not valid_timezone(new_tz):
        raise PreferenceError("invalid_timezone", "choose a time zone from the list, such as Europe/Paris",
                              "timezone")
    changed = [f for f, old, new in (("name", subscriber.name, new_name),
                                     ("timezone", subscriber.timezone or "", new_tz)) if old != new]
    if not changed:
        return []
    old_tz = subscriber.timezone
    subscriber.name, subscriber.timezone, subscriber.updated_at = new_name, new_tz or None, now
    moved = _reschedule(session, subscriber, campaigns, now) if "timezone" in changed else 0
    # Field names only: the values are personal data and the timeline is read by operators.
    events.record(session, type="profile_updated", now=now, subscriber_id=subscriber.id,
                  detail=f"changed {' and '.join(changed)} on the preference page",
                  data={"changed": changed, "timezone": [old_tz, new_tz or None], "rescheduled": moved})
    return changed


def _reschedule(session: Session, subscriber: Subscriber, campaigns: dict[str, Campaign], now: datetime) -> int:
    """Every pending step that waits by its schedule is recomputed in the reader's new zone from the moment
    it counts from (`due_from`: the previous send, or when they joined, continued or switched), by the same
    rule the dispatcher used to set it. Steps due at once, and emails already queued, keep their time."""
    moved = 0
    for e in session.scalars(select(Enrollment).where(
            Enrollment.subscriber_id == subscriber.id, Enrollment.status == "active",
            Enrollment.next_due_at.is_not(None), Enrollment.due_from.is_not(None))):
        campaign = campaigns.get(e.campaign)
        step = campaign.step(e.next_step) if campaign else None
        if campaign is None or step is None:
            continue
        e.next_due_at = step_due(campaign, step, after=e.due_from, reader_timezone=subscriber.timezone)
        e.updated_at = now
        moved += 1
    return moved


def snooze(session: Session, subscriber: Subscriber, weeks: int, *, now: datetime) -> datetime:
    """Pauses all email for `weeks` (2, 4 or 8). Queued mail and due steps wait (see dispatch/queue.py, not_snoozed)."""
    if weeks not in SNOOZE_WEEKS:
        raise PreferenceError("invalid_snooze", "choose 2, 4 or 8 weeks", "weeks")
    subscriber.snoozed_until, subscriber.updated_at = now + timedelta(weeks=weeks), now
    events.record(session, type="snoozed", now=now, subscriber_id=subscriber.id,
                  detail=f"snoozed for {weeks} weeks, until {subscriber.snoozed_until:%Y-%m-%d %H:%M} UTC",
                  data={"weeks": weeks, "until": subscriber.snoozed_until.isoformat()})
    return subscriber.snoozed_until


def end_snooze(session: Session, subscriber: Subscriber, *, now: datetime) -> None:
    """The reader resumes early."""
    if subscriber.snoozed_until is None or subscriber.snoozed_until <= now:
        return
    subscriber.snoozed_until, subscriber.updated_at = None, now
    events.record(session, type="snooze_ended", now=now, subscriber_id=subscriber.id,
                  detail="resumed early on the preference page")


def switch_to_digest(session: Session, subscriber: Subscriber, campaign: str, *, campaigns: dict[str, Campaign],
                     now: datetime) -> str:
    """Leaves `campaign` for its digest campaign. The digest starts after its welcome (the reader had one
    welcome already): its first regular step is due one digest interval from now, at the send hour in the
    reader's zone. Recorded as a consent (the reader chose the digest) and an event. Returns the digest key."""
    source = campaigns.get(campaign)
    digest = campaigns.get(source.digest) if source and source.digest else None
    if source is None or digest is None:
        raise PreferenceError("no_digest", "that campaign has no digest to switch to", "campaign")
    enrollment = _active_enrollment(session, subscriber, campaign)
    _stop_enrollment(session, enrollment, reason=f"switched to {digest.key}", now=now)
    first = 1 if len(digest.steps) > 1 else 0
    step = digest.step(first)
    due = step_due(digest, step, after=now, reader_timezone=subscriber.timezone) if first else now
    target = session.scalar(select(Enrollment).where(Enrollment.subscriber_id == subscriber.id,
                                                     Enrollment.campaign == digest.key))
    if target is None:
        enrollment_start.start(session, subscriber_id=subscriber.id, campaign=digest.key, step=step, due=due,
                               due_from=now if first else None, now=now)
    elif target.status != "active":  # they had left the digest before: it restarts where they left it
        target.status, target.stopped_reason, target.updated_at = "active", None, now
        target.next_step = max(target.next_step, first)
        resume = digest.step(target.next_step)
        target.next_due_at = step_due(digest, resume, after=now, reader_timezone=subscriber.timezone) if resume else now
        target.due_from = now if resume else None
    session.add(Consent(subscriber_id=subscriber.id, campaign=digest.key, created_at=now, source="preferences",
                        wording=f'Clicked "Switch to {cadence(digest)}" on the preference page, under '
                                f"{source.title}: {digest.title} instead."))
    events.record(session, type="switched_to_digest", now=now, subscriber_id=subscriber.id,
                  detail=f"switched from {campaign} to {digest.key}", data={"from": campaign, "to": digest.key})
    return digest.key


# -- the reader's data: export and erasure are service/audience/privacy.py's, shared with the operator ------------
def export_reader_data(session: Session, subscriber: Subscriber, *, now: datetime) -> dict:
    """Everything held about the reader, downloaded from their own preference page."""
    return privacy.export_subscriber(session, subscriber, now=now, by="the reader")


def erase_reader(session: Session, subscriber: Subscriber, *, now: datetime) -> None:
    """The reader erases everything about them; only the address's hash stays, suppressed."""
    privacy.erase_subscriber(session, subscriber, now, by="the reader on the preference page")


# -- what a forwarded email gives away: the address masked, data only through the reader's own inbox ---------
DATA_LINK_COOLDOWN = timedelta(minutes=10)  # at most one data link per kind per reader this often
DATA_LINK_MAX_AGE = timedelta(hours=1)


def masked_address(email: str) -> str:
    """`a•••@example.org`: enough for the reader to recognise their address, not enough for whoever the email
    was forwarded to to learn it."""
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}\u2022\u2022\u2022@{domain}" if local else "\u2022\u2022\u2022"


def data_link_due(session: Session, subscriber: Subscriber, action: str, *, now: datetime) -> bool:
    """False when a link for `action` went to the reader within the cooldown: the preference page cannot be
    used to fill someone's inbox."""
    recent = session.scalars(select(Event.data).where(
        Event.subscriber_id == subscriber.id, Event.type == "data_link_sent",
        Event.created_at > now - DATA_LINK_COOLDOWN)).all()
    return not any(isinstance(d, dict) and d.get("action") == action for d in recent)


def note_data_link(session: Session, subscriber: Subscriber, action: str, *, now: datetime) -> Event:
    """Recorded before the link is sent (and removed by the caller if sending fails)."""
    what = "download" if action == "export" else "erase"
    return events.record(session, type="data_link_sent", now=now, subscriber_id=subscriber.id,
                         detail=f"asked on the preference page to {what} their data; a link was emailed to "
                                "their own address", data={"action": action})
