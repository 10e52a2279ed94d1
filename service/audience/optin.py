"""Double opt-in: a campaign with `double_opt_in = true` enrolls a reader only after they click
the signed link in a confirmation email.

- `request`: a form post for such a campaign stores a pending confirmation (one per reader and campaign,
  ON CONFLICT DO NOTHING) and grants a confirmation email only if none was granted within the cooldown.
  The grant is one conditional UPDATE, so fifty simultaneous posts grant one email: a form cannot be
  used to bomb someone's inbox.
- `send_due`: the dispatcher's pass sends granted confirmations (a lease per row, so two workers never
  send the same one). They are transactional emails, kept out of the message log and the stats.
- `confirm`: the link's POST creates the enrollment (due now: the welcome follows) and records a consent
  row with source "confirmed". Pending rows older than the expiry are deleted by `expire`; the token
  itself expires at the same age.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from service.campaigns.model import Campaign
from service.campaigns.schedule import next_window_day
from service.core import events
from service.core.models import Consent, Enrollment, Message, PendingConfirmation, Subscriber
from service.enrollment import start as enrollment_start
from service.enrollment.suppression import is_suppressed
from service.transports.base import OutboundEmail, Transport

log = logging.getLogger(__name__)


def _insert(session: Session):
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def request(session: Session, *, subscriber: Subscriber, campaign: Campaign, now: datetime,
            cooldown: timedelta, since: datetime | None = None) -> bool:
    """Stores the pending signup; True when a confirmation email was granted (new, or cooldown passed).
    `since` (a returning reader's unsubscribe time): a pending row older than it belongs to the time before
    they left, so it is renewed and an email granted whatever the cooldown."""
    created = session.execute(
        _insert(session)(PendingConfirmation)
        .values(subscriber_id=subscriber.id, campaign=campaign.key, created_at=now, requested_at=now,
                send_pending=True, sends=0)
        .on_conflict_do_nothing(index_elements=["subscriber_id", "campaign"])
        .returning(PendingConfirmation.id)
    ).scalar()
    if created is not None:
        return True
    granted = session.execute(
        update(PendingConfirmation)
        .where(PendingConfirmation.subscriber_id == subscriber.id, PendingConfirmation.campaign == campaign.key,
               (PendingConfirmation.requested_at <= now - cooldown) if since is None else
               or_(PendingConfirmation.requested_at <= now - cooldown, PendingConfirmation.requested_at <= since))
        .values(requested_at=now, send_pending=True)
    ).rowcount
    return bool(granted)


@dataclass(frozen=True)
class ConfirmResult:
    # "confirmed", "returned" (an unsubscribed reader came back), "already" (was enrolled), "expired" (no
    # pending signup) or "inactive"
    state: str
    campaign: Campaign | None
    earlier_welcome: int | None = None  # "returned" to a campaign whose welcome they had: that message's id


def _asked_since_leaving(session: Session, subscriber: Subscriber, campaign: Campaign):
    """A returning reader's pending signup: one asked for after they unsubscribed (an older one, from before
    they left, brings no one back)."""
    if subscriber.status != "unsubscribed" or subscriber.unsubscribed_at is None:
        return None
    return session.scalar(select(PendingConfirmation.id).where(
        PendingConfirmation.subscriber_id == subscriber.id, PendingConfirmation.campaign == campaign.key,
        PendingConfirmation.requested_at >= subscriber.unsubscribed_at))  # renewed at or after leaving


def confirm(session: Session, *, public_id: str, campaign: Campaign, now: datetime) -> ConfirmResult:
    subscriber = session.scalars(select(Subscriber).where(Subscriber.public_id == public_id)
                                 .with_for_update()).one_or_none()
    if subscriber is None:
        return ConfirmResult("expired", campaign)
    if subscriber.status != "active":
        if _asked_since_leaving(session, subscriber, campaign) is None or is_suppressed(session, subscriber.email_key):
            return ConfirmResult("inactive", campaign)
        return _come_back(session, subscriber, campaign, now=now)
    pending = session.execute(
        delete(PendingConfirmation)
        .where(PendingConfirmation.subscriber_id == subscriber.id, PendingConfirmation.campaign == campaign.key)
        .returning(PendingConfirmation.id)
    ).scalar()
    enrolled = enrollment_start.start(session, subscriber_id=subscriber.id, campaign=campaign.key,
                                      step=campaign.steps[0], due=now, due_from=None,
                                      now=now) if pending is not None else None
    earlier = None
    if enrolled is None:
        stopped = session.scalars(select(Enrollment).where(
            Enrollment.subscriber_id == subscriber.id, Enrollment.campaign == campaign.key,
            Enrollment.status == "stopped")).one_or_none() if pending is not None else None
        if stopped is None:  # already in it, or nothing was pending
            exists = session.scalar(select(Enrollment.id).where(Enrollment.subscriber_id == subscriber.id,
                                                                Enrollment.campaign == campaign.key))
            return ConfirmResult("already" if exists else "expired", campaign)
        earlier = _restart(session, stopped, campaign, now=now)  # they had left it and asked again

    session.add(Consent(subscriber_id=subscriber.id, campaign=campaign.key, created_at=now, source="confirmed",
                        wording=f"Confirmed by clicking the link emailed to the address: {campaign.consent}"))
    events.record(session, type="confirmed", now=now, subscriber_id=subscriber.id,
                  detail=f"double opt-in confirmed for {campaign.key}")
    return ConfirmResult("confirmed", campaign, earlier_welcome=earlier)


def _come_back(session: Session, subscriber: Subscriber, campaign: Campaign, *, now: datetime) -> ConfirmResult:
    """The returning reader clicked: active again, and this campaign starts (its welcome due now) or, if they
    were in it before, continues with the first step they never had, due now (one message per step, ever:
    a welcome they had is not sent twice; the page links its web copy instead). Their other campaigns stay
    stopped: they asked for this one."""
    session.execute(delete(PendingConfirmation).where(PendingConfirmation.subscriber_id == subscriber.id,
                                                      PendingConfirmation.campaign == campaign.key))
    subscriber.status, subscriber.unsubscribed_at, subscriber.updated_at = "active", None, now
    earlier = None
    started = enrollment_start.start(session, subscriber_id=subscriber.id, campaign=campaign.key,
                                     step=campaign.steps[0], due=now, due_from=None, now=now)
    if started is None:
        enrollment = session.scalars(select(Enrollment).where(Enrollment.subscriber_id == subscriber.id,
                                                              Enrollment.campaign == campaign.key)).one()
        earlier = _restart(session, enrollment, campaign, now=now)
    session.add(Consent(subscriber_id=subscriber.id, campaign=campaign.key, created_at=now, source="confirmed",
                        wording=f"Came back after unsubscribing, by clicking the link emailed to the address: "
                                f"{campaign.consent}"))
    events.record(session, type="resubscribed", now=now, subscriber_id=subscriber.id,
                  detail=f"came back to {campaign.key}: clicked the link in the come-back email",
                  data={"campaign": campaign.key, "by": "the reader"})
    return ConfirmResult("returned", campaign, earlier_welcome=earlier)


def _restart(session: Session, enrollment: Enrollment, campaign: Campaign, *, now: datetime) -> int | None:
    """A stopped enrollment the reader asked for again (and confirmed by email) goes on with the first step
    they never had, due now: one message per step, ever, so a welcome they had is not sent twice. Returns
    that earlier welcome's message id, for the page to link its web copy."""
    if enrollment.status != "stopped":
        return None
    had = dict(session.execute(select(Message.step_key, Message.id).where(Message.enrollment_id == enrollment.id,
                                                                          Message.sent_at.is_not(None))).all())
    used = set(session.scalars(select(Message.step_key).where(Message.enrollment_id == enrollment.id)))
    nxt = next((step for step in campaign.steps if step.key not in used), None)
    enrollment.status, enrollment.stopped_reason, enrollment.updated_at, enrollment.due_from = "active", None, now, None
    if nxt is None:  # nothing left to send: the campaign stays finished
        enrollment.status, enrollment.next_due_at = "completed", None
    else:
        enrollment.next_step, enrollment.next_step_key, enrollment.next_due_at = nxt.index, nxt.key, now
    return had.get(campaign.steps[0].key)


def expire(session: Session, *, now: datetime, max_age: timedelta) -> int:
    """Deletes pending signups whose last confirmation email was granted more than `max_age` ago; the
    links in those emails stop working at the same age (a re-sent link gets the full time). An address
    that never confirmed anything (no enrollment, nothing else pending) is forgotten with its consent
    and events (ON DELETE CASCADE): we keep no one who did not confirm. A reader who unsubscribed from the
    confirmation email (or bounced or complained) is kept: that record must outlive the pending signup."""
    gone = session.scalars(delete(PendingConfirmation).where(PendingConfirmation.requested_at < now - max_age)
                           .returning(PendingConfirmation.subscriber_id)).all()
    if gone:
        session.execute(delete(Subscriber).where(
            Subscriber.id.in_(set(gone)), Subscriber.status == "active",
            ~exists().where(Enrollment.subscriber_id == Subscriber.id),
            ~exists().where(PendingConfirmation.subscriber_id == Subscriber.id)))
    return len(gone)


@dataclass(frozen=True)
class ConfirmJob:
    pending_id: int
    campaign: Campaign
    to_email: str
    name: str
    public_id: str
    returning: bool = False  # an unsubscribed reader asked again: the "do you want to come back?" email
    subscriber_id: int = 0


def send_due(sessions: sessionmaker[Session], *, campaigns: Mapping[str, Campaign], now: datetime,
             real_now: datetime, compose: Callable[[ConfirmJob], OutboundEmail],
             transport_factory: Callable[[], Transport], lease: timedelta, max_age: timedelta) -> int:
    """Expires old pending signups, then sends every granted confirmation; returns how many were handled."""
    with sessions() as session, session.begin():
        expire(session, now=now, max_age=max_age)
        rows = session.execute(
            select(PendingConfirmation, Subscriber).join(Subscriber, Subscriber.id == PendingConfirmation.subscriber_id)
            .where(PendingConfirmation.send_pending.is_(True),
                   or_(Subscriber.status == "active",  # or a returning reader who asked after leaving
                       and_(Subscriber.status == "unsubscribed",
                            PendingConfirmation.requested_at >= Subscriber.unsubscribed_at)),
                   (PendingConfirmation.sending_until.is_(None)) | (PendingConfirmation.sending_until < real_now))
            .limit(200).with_for_update(skip_locked=True, of=PendingConfirmation)
        ).all()
        jobs = []
        for pending, subscriber in rows:
            campaign = campaigns.get(pending.campaign)
            if campaign is None:
                continue
            pending.sending_until = real_now + lease
            jobs.append(ConfirmJob(pending.id, campaign, subscriber.email, subscriber.name, subscriber.public_id,
                                   returning=subscriber.status == "unsubscribed", subscriber_id=subscriber.id))
    if not jobs:
        return 0
    return _send(sessions, jobs, compose, transport_factory, now)


def _send(sessions: sessionmaker[Session], jobs: list[ConfirmJob], compose: Callable[[ConfirmJob], OutboundEmail],
          transport_factory: Callable[[], Transport], now: datetime) -> int:
    transport = transport_factory()
    sent: list[int] = []
    try:
        outbound = [compose(job) for job in jobs]
        for job, result in zip(jobs, transport.send(iter(outbound)), strict=False):
            if result.ok or result.permanent:  # a refused address is not retried until the next form post
                sent.append(job.pending_id)
            if not result.ok:
                log.warning("confirmation for pending signup %s not sent: %s", job.pending_id, result.error)
    except Exception:  # a relay outage leaves the rest granted; the lease expiry retries them
        log.exception("sending confirmations failed")
    finally:
        transport.close()
    if sent:
        with sessions() as session, session.begin():
            session.execute(update(PendingConfirmation).where(PendingConfirmation.id.in_(sent))
                            .values(send_pending=False, sending_until=None,
                                    sends=PendingConfirmation.sends + 1))
            for job in jobs:  # in the reader's timeline: these emails are not in the message log
                if job.pending_id in sent and job.subscriber_id:
                    kind = "come-back" if job.returning else "confirmation"
                    events.record(session, type="confirmation_sent", now=now, subscriber_id=job.subscriber_id,
                                  detail=f"{kind} email sent for {job.campaign.key}",
                                  data={"campaign": job.campaign.key, "returning": job.returning})
    return len(sent)


# -- invitations: a lead magnet that promised only a download asks once; the reader's click decides -----
@dataclass(frozen=True)
class JoinResult:
    state: str  # "joined", "already" (in the target already), "inactive" (unsubscribed/bounced) or "invalid"
    target: Campaign | None


def invitation_target(campaign: Campaign | None, campaigns: Mapping[str, Campaign]) -> Campaign | None:
    """The campaign `campaign` invites its readers to, when it invites to one that exists."""
    return campaigns.get(campaign.invite_to) if campaign is not None and campaign.invite_to else None


def accept_invitation(session: Session, *, public_id: str, campaign: Campaign, campaigns: Mapping[str, Campaign],
                      now: datetime) -> JoinResult:
    """The reader said yes on the invitation page: they join `campaign.invite_to` at `invite_at`, its first
    email due at the next send hour in their zone (not a week later: they just asked). The consent row holds
    the words the page showed them. A reader who had left the target before is not re-joined silently by an
    old link: they are told they are already known there and can use the preference page."""
    target = invitation_target(campaign, campaigns)
    subscriber = session.scalars(select(Subscriber).where(Subscriber.public_id == public_id)).one_or_none()
    if target is None or subscriber is None:
        return JoinResult("invalid", target)
    if subscriber.status != "active":
        return JoinResult("inactive", target)
    step = target.step_by_key(campaign.invite_at or target.steps[0].key) or target.steps[0]
    due = next_window_day(target, step, after=now, reader_timezone=subscriber.timezone) if step.index else now
    joined = enrollment_start.start(session, subscriber_id=subscriber.id, campaign=target.key, step=step, due=due,
                                    due_from=None, now=now)
    if joined is None:
        return JoinResult("already", target)
    session.add(Consent(subscriber_id=subscriber.id, campaign=target.key, created_at=now, source="invitation",
                        wording=invitation_consent(campaign)))
    events.record(session, type="signup", now=now, subscriber_id=subscriber.id,
                  detail=f"said yes to the invitation in {campaign.key}: joined {target.key} at {step.key}",
                  data={"from": campaign.key, "to": target.key, "step": step.key})
    return JoinResult("joined", target)


INVITATION_BUTTON = "Yes, sign me up"


def invitation_consent(campaign: Campaign) -> str:
    """The consent wording of an accepted invitation: the question and the button, as the page shows them."""
    return f'Clicked "{INVITATION_BUTTON}" under: {campaign.invite_wording}'
